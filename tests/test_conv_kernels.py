"""The convolution kernels of rpucuda: im2col / col2im against torch's unfolding (values and
gradients bit for bit), the many-streams normal generator against single draws, and io_conv
(the one-pass analog convolution) against im2col + io_mvm, bit for bit, for every periphery
feature, thread count and instruction-set level."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import f32, io_params, mapping

import aihw_deploy  # noqa: F401  (registers torch.ops.aihw)
from aihw_deploy.ops import encode_io
from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.configs import IOParameters
from aihw_deploy.simulator.parameters import BoundManagementType, NoiseManagementType, WeightNoiseType

tiles = rpu_base.tiles

# (spatial size, kernel, stride, padding, dilation)
GEOMETRIES = [
    ((23,), (4,), (2,), (3,), (2,)),
    ((9,), (1,), (1,), (0,), (1,)),
    ((9, 11), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((10, 7), (3, 2), (2, 1), (0, 2), (1, 2)),
    ((3, 3), (3, 3), (1, 1), (0, 0), (1, 1)),  # one output position
    ((5, 6, 4), (2, 3, 2), (1, 2, 1), (1, 0, 1), (2, 1, 1)),
    ((4, 4, 5), (3, 1, 2), (2, 1, 3), (1, 0, 2), (1, 1, 2)),
    ((13, 12), (3, 3), (1, 1), (1, 1), (1, 1)),  # 156 positions: two blocks of io_conv per image
    ((5, 16), (3, 3), (1, 1), (1, 1), (1, 1)),  # rows of 16 positions: the DAC writes slabs of 32
]


def out_size(size, kernel, stride, padding, dilation):
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation))


def unfold_reference(x, kernel, stride, padding, dilation):
    """[N, C, *S] -> [N * L, C * prod(kernel)] by direct indexing (numpy, float64-free copy)."""
    x = np.asarray(x)
    n, c = x.shape[:2]
    d = len(kernel)
    size = x.shape[2:]
    outs = out_size(size, kernel, stride, padding, dilation)
    rows = []
    for b in range(n):
        for pos in np.ndindex(*outs):
            row = []
            for ch in range(c):
                for koff in np.ndindex(*kernel):
                    idx = [pos[i] * stride[i] - padding[i] + koff[i] * dilation[i] for i in range(d)]
                    inside = all(0 <= idx[i] < size[i] for i in range(d))
                    row.append(x[(b, ch) + tuple(idx)] if inside else 0.0)
            rows.append(row)
    return np.array(rows, np.float32).reshape(n * int(np.prod(outs)), c * int(np.prod(kernel)))


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_im2col_equals_direct_indexing(geom):
    size, kernel, stride, padding, dilation = geom
    g = np.random.default_rng(len(size) + sum(size))
    x = f32(g.normal(size=(2, 5) + size))
    ref = unfold_reference(x, kernel, stride, padding, dilation)
    got = tiles.im2col(x, list(kernel), list(stride), list(padding), list(dilation))
    np.testing.assert_array_equal(got, ref)
    # one group's channels (channel_offset, channels) and the analog-bias column of ones
    got = tiles.im2col(x, list(kernel), list(stride), list(padding), list(dilation), channel_offset=2, channels=3,
                       ones_column=True)
    ref = unfold_reference(x[:, 2:5], kernel, stride, padding, dilation)
    np.testing.assert_array_equal(got[:, :-1], ref)
    np.testing.assert_array_equal(got[:, -1], 1.0)


def test_im2col_2d_equals_f_unfold():
    x = torch.rand(3, 4, 13, 9)
    cols = tiles.im2col(x, [3, 2], [2, 1], [1, 1], [1, 2])
    ref = F.unfold(x, (3, 2), dilation=(1, 2), padding=(1, 1), stride=(2, 1))  # [N, C*k, L]
    assert torch.equal(torch.from_numpy(cols), ref.transpose(1, 2).reshape(-1, ref.shape[1]))


def _torch_unfold_grad(x, grad_cols, kernel, stride, padding, dilation):
    """The gradient of the torch im2col that rpucuda's replaces: F.unfold (2-d), else F.pad and
    Tensor.unfold per dimension."""
    from aihw_deploy.nn.modules.conv import _unfold_torch

    x = x.clone().requires_grad_()
    cols = _unfold_torch(x, kernel, stride, padding, dilation)
    cols.backward(grad_cols)
    return x.grad


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_col2im_is_the_gradient_of_torch_unfolding_bit_for_bit(geom):
    size, kernel, stride, padding, dilation = geom
    torch.manual_seed(len(size))
    x = torch.rand(2, 3, *size)
    L = int(np.prod(out_size(size, kernel, stride, padding, dilation)))
    grad = torch.randn(2 * L, 3 * int(np.prod(kernel)))
    ref = _torch_unfold_grad(x, grad, kernel, stride, padding, dilation)
    got = torch.empty_like(x)
    order = "fold" if len(size) == 2 else "unfold"
    tiles.col2im(grad, got, list(kernel), list(stride), list(padding), list(dilation), order=order)
    assert torch.equal(got, ref)
    # the extra ones column of an analog bias is ignored
    got2 = torch.empty_like(x)
    tiles.col2im(torch.cat([grad, torch.rand(grad.shape[0], 1)], 1).contiguous(), got2, list(kernel), list(stride),
                 list(padding), list(dilation), order=order)
    assert torch.equal(got2, ref)


def test_col2im_is_the_adjoint_of_im2col():
    """<im2col(x), g> = <x, col2im(g)> (float64 sums of float32 products)."""
    g = np.random.default_rng(0)
    x = f32(g.normal(size=(2, 3, 7, 6)))
    geo = ([3, 2], [2, 1], [1, 0], [1, 2])
    cols = tiles.im2col(x, *geo)
    gr = f32(g.normal(size=cols.shape))
    back = np.empty_like(x)
    tiles.col2im(gr, back, *geo)
    lhs = np.sum(cols.astype(np.float64) * gr)
    rhs = np.sum(x.astype(np.float64) * back)
    assert abs(lhs - rhs) <= 1e-5 * np.sum(np.abs(cols.astype(np.float64) * gr))


def test_conv_layer_gradients_match_torch_conv():
    from aihw_deploy.nn import AnalogConv2d
    from aihw_deploy.simulator.configs import FloatingPointRPUConfig

    torch.manual_seed(1)
    layer = AnalogConv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2,
                         rpu_config=FloatingPointRPUConfig())
    ref = torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    w, b = layer.get_weights()
    with torch.no_grad():
        ref.weight.copy_(w)
        ref.bias.copy_(b)
    x = torch.rand(3, 4, 9, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = layer(x)
    gy = torch.rand_like(y)
    y.backward(gy)
    ref(x2).backward(gy)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_im2col_errors_name_the_problem():
    x = np.zeros((1, 2, 4, 5), np.float32)
    with pytest.raises(ValueError, match="kernel span 7"):
        tiles.im2col(x, [3, 7], [1, 1], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="need 2 entries"):
        tiles.im2col(x, [3], [1], [0], [1])
    with pytest.raises(ValueError, match="not inside the 2 channels"):
        tiles.im2col(x, [1, 1], [1, 1], [0, 0], [1, 1], channel_offset=1, channels=2)


def test_all_finite():
    x = np.ones(10000, np.float32)
    assert tiles.all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[7777] = bad
        assert not tiles.all_finite(y)


# -- the many-streams normal generator --------------------------------------------------------
@pytest.mark.parametrize("L", [1, 5, 32, 33])
def test_column_normals_equal_single_draws(L):
    bases = [0, 4, 1 << 20, 123 << 20, (1 << 34) - 8, (2**32 - 4) * 4] + [(n << 20) for n in range(70)]
    z = rpu_base.rng.normals_columns(L, bases, 77, 2, 1, 2**33 + 5)
    u = rpu_base.rng.uniforms_columns(L, bases, 77, 5, 0, 9)
    assert z.shape == (L, len(bases))
    for c, b in enumerate(bases):
        np.testing.assert_array_equal(z[:, c], rpu_base.rng.normals(L, 77, 2, 1, 2**33 + 5, b))
        np.testing.assert_array_equal(u[:, c], rpu_base.rng.uniforms(L, 77, 5, 0, 9, b))
    assert rpu_base.rng.normals_columns(3, [8], 1, 2, 0, 0)[1, 0] == np.float32(rpu_base.rng.normal_at(1, 2, 0, 0, 9))


# -- io_conv: the one-pass analog convolution --------------------------------------------------
CASES = [
    dict(),
    dict(out_noise=0.0),
    dict(inp_noise=0.05),
    dict(out_bound=0.5),  # saturation: bound management on many positions
    dict(out_bound=0.3, bound_management=BoundManagementType.ITERATIVE_WORST_CASE, inp_noise=0.02),
    dict(out_bound=0.5, noise_management=NoiseManagementType.MAX, w_noise=0.01,
         w_noise_type=WeightNoiseType.ADDITIVE_CONSTANT),
    dict(w_noise=0.02, w_noise_type=WeightNoiseType.PCM_READ, out_scale=2.5),
    dict(noise_management=NoiseManagementType.CONSTANT, nm_thres=0.5, out_bound=0.8),
    dict(noise_management=NoiseManagementType.NONE, bound_management=BoundManagementType.NONE, inp_res=100.0,
         out_res=7.0, out_bound=0.0),
    dict(inp_res=0.0, out_res=0.0, out_noise=0.0),
    dict(is_perfect=True),
    # the im2col + io_mvm fallback
    dict(inp_noise=0.05, inp_sto_round=True, out_sto_round=True),
    dict(noise_management=NoiseManagementType.AVERAGE_ABS_MAX, out_bound=0.5),
]
CONV_SHAPES = [  # (geometry index, N, C, M, groups)
    (2, 3, 4, 6, 1),
    (3, 2, 4, 8, 2),
    (0, 4, 3, 5, 1),
    (5, 2, 2, 4, 2),
    (4, 5, 3, 7, 1),
    # at least 4 images per thread (2 threads): io_conv goes image by image
    (7, 9, 3, 4, 1),
    (5, 8, 2, 3, 1),
    (8, 3, 4, 5, 1),
    (8, 9, 2, 3, 1),
    (0, 9, 3, 5, 1),  # 1-D, image by image
    (2, 8, 4, 6, 2),  # groups, image by image
]
MAPPINGS = [(512, 512), (64, 3), (16, 8)]  # (16, 8): several tiles along the input (fallback)


def _reference(x, w, alpha, bias, io, mp, geom, groups, analog_bias, seeds, calls):
    """im2col (direct indexing) + io_mvm per group, then [N, M, *out] (+ bias)."""
    size, kernel, stride, padding, dilation = geom
    n, c = x.shape[:2]
    m = w.shape[0]
    cg, mg = c // groups, m // groups
    outs = out_size(size, kernel, stride, padding, dilation)
    L = int(np.prod(outs))
    ys = []
    for g in range(groups):
        cols = unfold_reference(x[:, g * cg:(g + 1) * cg], kernel, stride, padding, dilation)
        if analog_bias:
            cols = np.concatenate([cols, np.ones((cols.shape[0], 1), np.float32)], 1)
        y = tiles.io_mvm(np.ascontiguousarray(w[g * mg:(g + 1) * mg]), np.ascontiguousarray(cols), io=io,
                         mapping=mp, alpha=None if alpha is None else np.ascontiguousarray(alpha[g]),
                         seed=seeds[g], call=calls[g])
        ys.append(y)
    y = np.concatenate(ys, 1).reshape(n, L, m).transpose(0, 2, 1).reshape((n, m) + outs)
    if bias is not None:
        y = y + bias.reshape((1, m) + (1,) * len(size))
    return np.ascontiguousarray(y)


def _conv_case(ci, si, mi, analog_bias):
    gi, n, c, m, groups = CONV_SHAPES[si]
    geom = GEOMETRIES[gi]
    size, kernel = geom[0], geom[1]
    g = np.random.default_rng(1000 * ci + 100 * si + 10 * mi + analog_bias)
    x = f32(g.uniform(-1, 1, size=(n, c) + size))
    if n > 2:
        x[1] = 0.0  # zero positions
        x[2, 0] = 30.0  # saturating positions
        x[2, -1].flat[0] = np.nan  # NaN positions
    k = c // groups * int(np.prod(kernel)) + analog_bias
    w = f32((g.uniform(size=(m, k)) - 0.5) * 0.4)
    alpha = None if ci % 3 else f32(g.uniform(0.5, 1.5, size=(groups, m // groups if ci % 2 else 1)))
    bias = None if ci % 2 else f32(g.uniform(size=m))
    seeds = [11 + i for i in range(groups)]
    calls = [3 + 2 * i for i in range(groups)]
    return x, w, alpha, bias, geom, groups, seeds, calls


def _io_conv_outputs(case_indices=range(len(CASES))):
    out = []
    for ci in case_indices:
        io = io_params(**CASES[ci])
        for si in range(len(CONV_SHAPES)):
            for mi, mp in enumerate(MAPPINGS):
                for analog_bias in (False, True):
                    x, w, alpha, bias, geom, groups, seeds, calls = _conv_case(ci, si, mi, analog_bias)
                    size, kernel, stride, padding, dilation = geom
                    y = np.empty((x.shape[0], w.shape[0]) + out_size(size, kernel, stride, padding, dilation), np.float32)
                    tiles.io_conv(w, x, y, io, mapping(*mp), list(kernel), list(stride), list(padding), list(dilation),
                                  groups, analog_bias, alpha, seeds, calls, bias=bias)
                    out.append(y)
    return out


@pytest.mark.parametrize("ci", range(len(CASES)))
def test_io_conv_equals_im2col_io_mvm_bit_for_bit(ci, restore_threads):
    io = io_params(**CASES[ci])
    got = _io_conv_outputs([ci])
    i = 0
    for si in range(len(CONV_SHAPES)):
        for mi, mp in enumerate(MAPPINGS):
            for analog_bias in (False, True):
                x, w, alpha, bias, geom, groups, seeds, calls = _conv_case(ci, si, mi, analog_bias)
                ref = _reference(x, w, alpha, bias, io, mapping(*mp), geom, groups, analog_bias, seeds, calls)
                np.testing.assert_array_equal(got[i].view(np.uint32), ref.view(np.uint32),
                                              err_msg=f"case {CASES[ci]}, shape {CONV_SHAPES[si]}, mapping {mp}")
                i += 1


def test_io_conv_rows_layout_equals_channels_layout():
    """layout='rows' writes the same values as [N * L, M] (the rows of io_mvm)."""
    for ci in (0, 3, 10, 12):
        io = io_params(**CASES[ci])
        for analog_bias in (False, True):
            x, w, alpha, bias, geom, groups, seeds, calls = _conv_case(ci, 1, 1, analog_bias)
            size, kernel, stride, padding, dilation = geom
            outs = out_size(size, kernel, stride, padding, dilation)
            args = (io, mapping(*MAPPINGS[1]), list(kernel), list(stride), list(padding), list(dilation), groups,
                    analog_bias, alpha, seeds, calls)
            y = np.empty((x.shape[0], w.shape[0]) + outs, np.float32)
            tiles.io_conv(w, x, y, *args, bias=bias)
            rows = np.empty((x.shape[0] * int(np.prod(outs)), w.shape[0]), np.float32)
            tiles.io_conv(w, x, rows, *args, bias=bias, layout="rows")
            ref = y.reshape(x.shape[0], w.shape[0], -1).transpose(0, 2, 1).reshape(rows.shape)
            np.testing.assert_array_equal(rows.view(np.uint32), ref.view(np.uint32))


def test_io_conv_is_independent_of_thread_count(restore_threads):
    ref = None
    for threads in (1, 2, 3):
        rpu_base.set_num_threads(threads)
        got = [y.view(np.uint32).tolist() for y in _io_conv_outputs()]
        if ref is None:
            ref = got
        else:
            assert got == ref, f"io_conv differs with {threads} threads"


_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import test_conv_kernels as t
from aihw_deploy.simulator import rpu_base
rpu_base.set_num_threads(2)
json.dump([y.view('uint32').tolist() for y in t._io_conv_outputs()], sys.stdout)
"""


@pytest.mark.parametrize("level", ["generic", "avx2"])
def test_io_conv_is_the_same_on_every_simd_level(level, restore_threads):
    rpu_base.set_num_threads(2)
    ref = [y.view(np.uint32).tolist() for y in _io_conv_outputs()]
    code = _CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, RPU_SIMD=level), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == ref, f"io_conv differs with RPU_SIMD={level}"


@pytest.mark.parametrize("inp_res, out_res", [(1 / 126, 1 / 510), (1 / 1000, 1 / 37), (0.3, 1 / 7)])
def test_io_conv_quantization_at_rounding_boundaries(inp_res, out_res):
    """Inputs on and next to the DAC's rounding boundaries (k + 1/2) * step and outputs spread
    over the ADC's: the fast quantization must round exactly like the division."""
    io = IOParameters(inp_res=inp_res, out_res=out_res, out_noise=0.0, out_bound=3.0)
    step = 2 * inp_res if inp_res <= 1 else 2 / inp_res
    g = np.random.default_rng(3)
    n, c, h = 4, 2, 40
    k = g.integers(-int(1 / step) - 1, int(1 / step) + 1, size=(n, c, h, h))  # |x| up to about 1
    x = ((k + 0.5) * np.float64(step)).astype(np.float32)
    shift = g.integers(-3, 4, size=x.shape)  # ulps away from the boundary
    x = np.nextafter(x, np.where(shift > 0, np.inf, -np.inf)).astype(np.float32)
    x = np.where(shift == 0, ((k + 0.5) * np.float32(step)).astype(np.float32), x).astype(np.float32)
    x = np.clip(x, -1.0, 1.0)
    x[:, 0, 0, :] = 1.0  # every 3x3 patch of rows 0-1 sees max |x| = 1: the DAC sees x itself
    x = np.ascontiguousarray(x)
    w = f32(g.normal(size=(8, c * 9)) * 0.3)
    y = np.empty((n, 8, h, h), np.float32)
    tiles.io_conv(w, x, y, io.as_bindings(), mapping(), [3, 3], [1, 1], [1, 1], [1, 1], 1, False, None, [5], [1])
    ref = _reference(x, w, None, None, io.as_bindings(), mapping(), ((h, h), (3, 3), (1, 1), (1, 1), (1, 1)), 1,
                     False, [5], [1])
    np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32))


def test_analog_conv_op_equals_reference():
    """torch.ops.aihw.analog_conv (the eval path of AnalogConvNd) on the CPU: io_conv."""
    x, w, alpha, bias, geom, groups, seeds, calls = _conv_case(0, 1, 1, False)
    size, kernel, stride, padding, dilation = geom
    io = IOParameters(inp_noise=0.01)
    y = torch.ops.aihw.analog_conv(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias),
                                   torch.from_numpy(alpha), encode_io(io), list(MAPPINGS[1]), list(kernel),
                                   list(stride), list(padding), list(dilation), groups, False, seeds, calls)
    ref = _reference(x, w, alpha, bias, io.as_bindings(), mapping(*MAPPINGS[1]), geom, groups, False, seeds, calls)
    np.testing.assert_array_equal(y.numpy().view(np.uint32), ref.view(np.uint32))
    empty = torch.ops.aihw.analog_conv(torch.zeros(0, 4, 10, 7), torch.from_numpy(w), None, None, encode_io(io),
                                       [512, 512], list(kernel), list(stride), list(padding), list(dilation), groups,
                                       False, seeds, calls)
    assert empty.shape == (0, 8, 4, 9)


def test_io_conv_errors_name_the_problem():
    x = np.zeros((1, 4, 6, 6), np.float32)
    w = np.zeros((6, 18), np.float32)
    y = np.empty((1, 6, 6, 6), np.float32)
    args = (io_params(), mapping(), [3, 3], [1, 1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="groups=4 must divide the 6 outputs"):
        tiles.io_conv(w, x, y, *args, 4, False, None, [0] * 4, [0] * 4)
    with pytest.raises(ValueError, match="weights must have 36 columns"):
        tiles.io_conv(w, x, y, *args, 1, False, None, [0], [0])
    with pytest.raises(ValueError, match="one seed and one call per group"):
        tiles.io_conv(w, x, y, *args, 2, False, None, [0], [0])
    with pytest.raises(ValueError, match=r"out: expected shape \(1, 6, 6, 6\)"):
        tiles.io_conv(w, x, np.empty((1, 6, 5, 6), np.float32), *args, 2, False, None, [0, 0], [0, 0])


def test_pulsed_conv_update_pairs_keep_their_inputs_until_the_step():
    """A pulsed tile keeps the (x, d) pair of each backward pass until the optimizer step, with x
    as the layer input (the unfolded input is made during the update): two backward passes
    before a step keep two intact pairs, and the step applies one update over both, the same as
    an update on their concatenated unfolded inputs."""
    import copy

    from aihw_deploy.nn import AnalogConv2d
    from aihw_deploy.optim import AnalogSGD
    from aihw_deploy.simulator.configs import ConstantStepDevice, SingleRPUConfig
    from aihw_deploy.simulator.tiles.analog import ConvPair

    torch.manual_seed(3)
    layer = AnalogConv2d(3, 4, 3, padding=1, rpu_config=SingleRPUConfig(device=ConstantStepDevice()))
    twin = copy.deepcopy(layer)
    xs = [torch.rand(2, 3, 6, 5) for _ in range(2)]
    for x in xs:
        layer(x).sum().backward()
    pending = layer._tiles[0]._pending
    assert len(pending) == 2 and all(isinstance(p, ConvPair) for p in pending)
    for p, x in zip(pending, xs):
        ref = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 27)
        assert torch.equal(p.columns()[:, :27], ref)  # (+ the analog bias column)
    cols = torch.cat([p.columns() for p in pending])
    d = torch.cat([p.d for p in pending])
    tile = twin._tiles[0]
    tile._native.set_generator(layer._tiles[0].seed, layer._tiles[0]._native.call_index)  # (after 2 forwards)
    AnalogSGD(layer.parameters(), lr=0.1).step()
    tile._native.learning_rate = 0.1
    tile._native.update(cols.contiguous(), d.contiguous())
    assert np.array_equal(layer._tiles[0]._native.get_weights(), tile._native.get_weights())


def test_conv_training_forward_equals_tile_forward_of_the_unfolded_input():
    """The training forward (io_conv, rows layout) gives tile.forward(im2col(x)) bit for bit and
    advances the tile's call counter the same way (InferenceTile with its modifier-free weights)."""
    import copy

    from aihw_deploy.nn import AnalogConv2d
    from aihw_deploy.simulator.configs import InferenceRPUConfig

    torch.manual_seed(4)
    layer = AnalogConv2d(4, 6, 3, stride=2, padding=1, groups=2, rpu_config=InferenceRPUConfig())
    twin = copy.deepcopy(layer)
    x = torch.rand(3, 4, 9, 8)
    y = layer(x)
    rows = []
    for g, tile in enumerate(twin._tiles):
        cols = torch.from_numpy(unfold_reference(x[:, 2 * g:2 * g + 2], (3, 3), (2, 2), (1, 1), (1, 1)))
        if tile.analog_bias:
            cols = torch.cat([cols, torch.ones(cols.shape[0], 1)], 1)
        rows.append(tile.forward(cols.contiguous()))
    ref = torch.cat(rows, 1)
    if twin.bias is not None:
        ref = ref + twin.bias
    ref = ref.reshape(3, 5, 4, 6).permute(0, 3, 1, 2)
    assert torch.equal(y.detach(), ref.detach())
    assert [t.call for t in layer._tiles] == [t.call for t in twin._tiles]


# -- the pulsed update of a convolution without the unfolded input (AnalogTile.update_conv) --------
@pytest.mark.parametrize("device,pulse", [("constant", "compressed"), ("soft", "compressed"), ("soft", "narrow"),
                                          ("linear", "implicit"), ("constant", "none")])
@pytest.mark.parametrize("geometry,ones", [(((3, 3), (1, 1), (1, 1), (1, 1)), False),
                                           (((2, 3), (2, 1), (0, 2), (1, 2)), True)])
def test_update_conv_equals_update_on_the_unfolded_input(device, pulse, geometry, ones):
    # update_conv(x, d) unfolds the rows block by block inside the update; it must give what
    # update(im2col(x), d) gives (bit for bit for the pulsed updates; the exact update, summed in
    # blocks of rows, within float rounding of d^T columns).
    from conftest import analog_tile

    from aihw_deploy.simulator.configs import ConstantStepDevice, LinearStepDevice, SoftBoundsDevice
    from aihw_deploy.simulator.parameters import PulseType, UpdateParameters

    dev = {"constant": ConstantStepDevice(dw_min=0.01), "soft": SoftBoundsDevice(dw_min=0.01),
           "linear": LinearStepDevice(dw_min=0.01, gamma_up=0.3)}[device]
    up = {"compressed": UpdateParameters(), "narrow": UpdateParameters(desired_bl=4),
          "implicit": UpdateParameters(pulse_type=PulseType.DETERMINISTIC_IMPLICIT, sto_round=True),
          "none": UpdateParameters(pulse_type=PulseType.NONE)}[pulse]
    kernel, stride, padding, dilation = (list(v) for v in geometry)
    g = np.random.default_rng(7)
    x = f32(g.uniform(-1, 1, size=(3, 2, 9, 8)))
    cols = rpu_base.tiles.im2col(x, kernel, stride, padding, dilation, ones_column=ones)
    assert cols.shape[0] > 64  # several row blocks
    d = f32(g.uniform(-1, 1, size=(cols.shape[0], 5)))
    tiles = [analog_tile(5, cols.shape[1], device=dev, update=up, seed=3) for _ in range(2)]
    w0 = f32(g.uniform(-0.3, 0.3, size=(5, cols.shape[1])))
    for t in tiles:
        t.set_weights(w0)
        t.learning_rate = 0.05
    w0 = tiles[0].get_weights()  # (clipped to the devices' bounds)
    tiles[0].update(cols, d)
    tiles[1].update_conv(x, d, kernel, stride, padding, dilation, ones_column=ones)
    w_ref, w = tiles[0].get_weights(), tiles[1].get_weights()
    assert tiles[0].call_index == tiles[1].call_index == 1
    assert np.abs(w - w0).max() > 0
    if pulse == "none":
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-5)
        np.testing.assert_allclose(w, w0 - 0.05 * d.astype(np.float64).T @ cols.astype(np.float64), rtol=0, atol=1e-5)
    else:
        assert np.array_equal(w, w_ref)


def test_update_conv_rejects_bad_input():
    from conftest import analog_tile

    t = analog_tile(4, 2 * 9)
    x = np.zeros((1, 2, 5, 5), np.float32)
    d = np.zeros((25, 4), np.float32)
    t.update_conv(x, d, [3, 3], [1, 1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="unfolded input has 19 columns, the tile 18"):
        t.update_conv(x, d, [3, 3], [1, 1], [1, 1], [1, 1], ones_column=True)
    with pytest.raises(ValueError, match="d"):
        t.update_conv(x, d[:24], [3, 3], [1, 1], [1, 1], [1, 1])
    x[0, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        t.update_conv(x, d, [3, 3], [1, 1], [1, 1], [1, 1])
