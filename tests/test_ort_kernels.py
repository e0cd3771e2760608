"""The onnxruntime custom ops of libaihw_ort_ops.so (contract: ort_ops/README.md).

Tiny ONNX graphs built with onnx.helper run in onnxruntime with the library registered and are
compared with the same rpucuda functions called through the bindings (rpu_base.tiles.io_mvm,
rpu_base.inference.*) with the same seeds and call indices: the kernel and the bindings run the
same code on the same numbers, so outputs must agree to float rounding (the tests ask for
<= 1e-6 of the output scale; in practice they are bit-identical).
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from aihw_deploy.simulator import rpu_base  # noqa: E402
from aihw_deploy.simulator.parameters import (  # noqa: E402
    BoundManagementType,
    IOParameters,
    MappingParameter,
    NoiseManagementType,
    WeightNoiseType,
)

from conftest import ort_library  # noqa: E402

DOMAIN = "ai.aihw"
OPSET = 17
READOUT_XOR = 0x5DEECE66D
io_mvm = rpu_base.tiles.io_mvm
inf = rpu_base.inference


# --------------------------------------------------------------------------- helpers


LIB = ort_library()
pytestmark = pytest.mark.skipif(LIB is None, reason="libaihw_ort_ops.so is not installed (AIHW_BUILD_ORT_OPS=OFF?)")


def _version_tuple(v):
    """(major, minor, patch) of a version string such as "1.24.1" ((0, 0, 0) if unparsable)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", v)
    return tuple(int(x or 0) for x in m.groups()) if m else (0, 0, 0)


# onnxruntime runs the library's output shape inference only from this version on (ort_ops/README.md).
ORT_SHAPE_INFERENCE = (1, 24, 1)


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def io_and_attrs(**kw):
    """(bindings IOParameters, ONNX attributes) for the IOParameters fields in kw."""
    io = IOParameters(**kw).as_bindings()
    attrs = {}
    for k, v in kw.items():
        if hasattr(v, "name"):  # enum -> its lower-case name (contract strings)
            attrs[k] = v.name.lower()
        elif isinstance(v, bool):
            attrs[k] = int(v)
        else:
            attrs[k] = float(v)
    return io, attrs


def mapping(max_input_size=512, max_output_size=512):
    return MappingParameter(max_input_size=max_input_size, max_output_size=max_output_size).as_bindings()


# A noisy periphery that exercises every noise source of the forward pass.
NOISY = dict(inp_noise=0.02, out_noise=0.05, w_noise=0.01, w_noise_type=WeightNoiseType.ADDITIVE_CONSTANT)


def make_model(op, inputs, initializers, attrs, n_inputs=None, outputs=("Y",), functions=()):
    """One custom node `op` reading `inputs` (names; "" for an absent optional input)."""
    node = helper.make_node(op, list(inputs), list(outputs), domain=DOMAIN, name=f"{op.lower()}_0", **attrs)
    init_names = {t.name for t in initializers}
    graph_inputs = []
    for name in inputs:
        if not name or name in init_names:
            continue
        if name == "seed":
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, []))
        elif name == "t_inference":
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, []))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    g = helper.make_graph([node], "g", graph_inputs,
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          initializers)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                          functions=list(functions))
    m.ir_version = 8  # opset 17's IR version: readable by onnxruntime 1.21, the oldest supported
    return m


def session(model, lib=LIB, threads=1, **config):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 4  # the tests check the raised messages; keep stderr quiet
    for k, v in config.items():
        so.add_session_config_entry(k, str(v))
    if lib:
        so.register_custom_ops_library(lib)
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def assert_close(y, ref, rel=1e-6):
    assert y.shape == ref.shape, (y.shape, ref.shape)
    scale = max(float(np.abs(ref).max()), 1e-6)
    err = float(np.abs(y.astype(np.float64) - ref).max())
    assert err <= rel * scale, f"max deviation {err:.3g} > {rel} x output scale {scale:.3g}"


def matmul_session(W, B=None, attrs=None, seeds=(11,), call_offsets=(0,), extra_inputs=(), w_constant=True, **kw):
    inits = [numpy_helper.from_array(f32(W), "W")] if w_constant else []
    inputs = ["X", "W"]
    if B is not None:
        inits.append(numpy_helper.from_array(f32(B), "B"))
        inputs.append("B")
    elif extra_inputs:
        inputs.append("")
    inputs += list(extra_inputs)
    a = dict(attrs or {})
    if seeds is not None:
        a["seeds"] = list(seeds)
    if call_offsets is not None:
        a["call_offsets"] = list(call_offsets)
    return session(make_model("AnalogMatMul", inputs, inits, a), **kw)


def raises_with(fn, *needles):
    with pytest.raises(Exception) as ei:
        fn()
    msg = str(ei.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message: {msg}"
    return msg


# --------------------------------------------------------------------------- library


def test_library_exports_only_register_custom_ops():
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not available")
    out = subprocess.run([nm, "-D", "--defined-only", LIB], capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert names == ["RegisterCustomOps"], names


def test_library_missing_gives_clear_error(tmp_path):
    missing = str(tmp_path / "nowhere" / "libaihw_ort_ops.so")
    so = ort.SessionOptions()
    raises_with(lambda: so.register_custom_ops_library(missing), "nowhere")


def test_model_needs_the_library():
    W = np.ones((2, 3), np.float32)
    m = make_model("AnalogMatMul", ["X", "W"], [numpy_helper.from_array(W, "W")], {})
    raises_with(lambda: session(m, lib=None), "AnalogMatMul")


def test_corrupt_onnx_file(tmp_path):
    path = tmp_path / "broken.onnx"
    W = np.ones((2, 3), np.float32)
    data = make_model("AnalogMatMul", ["X", "W"], [numpy_helper.from_array(W, "W")], {}).SerializeToString()
    path.write_bytes(data[: len(data) // 2] + b"\xff\x00garbage" * 4)
    with pytest.raises(Exception) as ei:
        session(str(path))
    assert "broken.onnx" in str(ei.value) or "rotobuf" in str(ei.value) or "parse" in str(ei.value).lower()


# --------------------------------------------------------------------------- AnalogMatMul


@pytest.mark.parametrize("x_shape", [(7, 30), (2, 3, 30), (30,)])
def test_matmul_matches_io_mvm(x_shape):
    g = np.random.default_rng(0)
    M, K = 20, 30
    W = f32(g.uniform(-0.6, 0.6, (M, K)))
    B = f32(g.normal(size=M))
    io, attrs = io_and_attrs(out_res=1 / 254, inp_res=1 / 62, **NOISY)
    s = matmul_session(W, B, attrs, seeds=(12345,), call_offsets=(7,))
    X = f32(g.normal(size=x_shape))
    X2 = X.reshape(-1, K)
    for i in range(3):
        y = s.run(None, {"X": X})[0]
        ref = io_mvm(W, X2, io=io, mapping=mapping(), seed=12345, call=7 + i) + B
        assert y.shape == x_shape[:-1] + (M,)
        assert_close(y.reshape(-1, M), ref)


def test_matmul_default_attributes_are_spec_defaults():
    g = np.random.default_rng(1)
    W = f32(g.uniform(-0.5, 0.5, (8, 16)))
    X = f32(g.normal(size=(5, 16)))
    s = matmul_session(W, seeds=None, call_offsets=None)
    ref = io_mvm(W, X, io=IOParameters().as_bindings(), mapping=mapping(), seed=0, call=0)
    assert_close(s.run(None, {"X": X})[0], ref)


@pytest.mark.parametrize("nm,bm", [
    (NoiseManagementType.MAX, BoundManagementType.ITERATIVE_WORST_CASE),
    (NoiseManagementType.AVERAGE_ABS_MAX, BoundManagementType.NONE),
    (NoiseManagementType.NONE, BoundManagementType.ITERATIVE),
])
def test_matmul_enum_attributes(nm, bm):
    g = np.random.default_rng(2)
    W = f32(g.uniform(-1, 1, (10, 40)))
    X = f32(g.normal(size=(6, 40)) * 2)
    io, attrs = io_and_attrs(noise_management=nm, bound_management=bm, out_bound=4.0, inp_sto_round=True,
                             out_sto_round=True, w_noise=0.02, w_noise_type=WeightNoiseType.PCM_READ)
    s = matmul_session(W, attrs=attrs, seeds=(5,), call_offsets=(0,))
    ref = io_mvm(W, X, io=io, mapping=mapping(), seed=5, call=0)
    assert_close(s.run(None, {"X": X})[0], ref)


def test_matmul_tiled():
    g = np.random.default_rng(3)
    M, K = 100, 150  # 2 x 3 physical tiles of at most 64 x 64
    W = f32(g.uniform(-0.3, 0.3, (M, K)))
    X = f32(g.normal(size=(9, K)))
    io, attrs = io_and_attrs(**NOISY)
    attrs.update(max_input_size=64, max_output_size=64)
    s = matmul_session(W, attrs=attrs, seeds=(77,), call_offsets=(3,))
    for i in range(2):
        ref = io_mvm(W, X, io=io, mapping=mapping(64, 64), seed=77, call=3 + i)
        assert_close(s.run(None, {"X": X})[0], ref)
    # and the tiling matters (a single tile gives other numbers)
    single = io_mvm(W, X, io=io, mapping=mapping(), seed=77, call=3)
    assert not np.allclose(single, io_mvm(W, X, io=io, mapping=mapping(64, 64), seed=77, call=3))


def test_matmul_weights_as_graph_input():
    """W not a constant initializer: used as given on every run."""
    g = np.random.default_rng(4)
    W1, W2 = f32(g.uniform(-0.5, 0.5, (6, 12))), f32(g.uniform(-0.5, 0.5, (6, 12)))
    X = f32(g.normal(size=(4, 12)))
    io, attrs = io_and_attrs(**NOISY)
    s = matmul_session(W1, attrs=attrs, seeds=(9,), call_offsets=(0,), w_constant=False)
    assert_close(s.run(None, {"X": X, "W": W1})[0], io_mvm(W1, X, io=io, mapping=mapping(), seed=9, call=0))
    assert_close(s.run(None, {"X": X, "W": W2})[0], io_mvm(W2, X, io=io, mapping=mapping(), seed=9, call=1))
    raises_with(lambda: s.run(None, {"X": X, "W": W1[:, :6].copy()}), "W changed shape")


def test_output_noise_std_equals_out_noise():
    """W = 0, no quantization, |x|max = 1 per row: the output is out_noise * N(0, 1) noise.
    n = 256 x 128 samples: the relative standard error of the std estimate is 1/sqrt(2n) = 0.4 %,
    the 3 % tolerance is > 7 standard errors; the mean is 0 within 5 sigma/sqrt(n)."""
    out_noise = 0.2
    M, K, N = 128, 16, 256
    W = np.zeros((M, K), np.float32)
    X = np.zeros((N, K), np.float32)
    X[:, 0] = 1.0
    _, attrs = io_and_attrs(out_noise=out_noise, out_res=0.0, inp_res=0.0, out_bound=100.0)
    s = matmul_session(W, attrs=attrs, seeds=(21,), call_offsets=(0,))
    y = s.run(None, {"X": X})[0].ravel().astype(np.float64)
    n = y.size
    assert abs(y.std() / out_noise - 1) < 0.03
    assert abs(y.mean()) < 5 * out_noise / np.sqrt(n)
    y2 = s.run(None, {"X": X})[0].ravel()
    assert abs(np.corrcoef(y, y2)[0, 1]) < 5 / np.sqrt(n)  # every run draws fresh noise


def test_seed_input_makes_a_call_reproducible():
    g = np.random.default_rng(5)
    W = f32(g.uniform(-0.5, 0.5, (12, 24)))
    X = f32(g.normal(size=(5, 24)))
    io, attrs = io_and_attrs(**NOISY)
    s = matmul_session(W, attrs=attrs, seeds=(3,), call_offsets=(10,), extra_inputs=("seed",))
    seeded = lambda v: s.run(None, {"X": X, "seed": np.array(v, np.int64)})[0]  # noqa: E731
    a, b, c = seeded(42), seeded(42), seeded(43)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert_close(a, io_mvm(W, X, io=io, mapping=mapping(), seed=42, call=0))
    # seeded runs do not advance the kernel's call counter; seed < 0 means "no seed"
    u0, u1 = seeded(-1), seeded(-1)
    assert_close(u0, io_mvm(W, X, io=io, mapping=mapping(), seed=3, call=10))
    assert_close(u1, io_mvm(W, X, io=io, mapping=mapping(), seed=3, call=11))


def test_concurrent_runs_are_safe_and_distinct():
    """8 threads x 100 runs on one session: no error, and the 800 outputs are exactly the
    outputs of calls offset .. offset + 799 (the atomic counter hands out every index once)."""
    g = np.random.default_rng(6)
    W = f32(g.uniform(-0.5, 0.5, (16, 32)))
    X = f32(g.normal(size=(4, 32)))
    io, attrs = io_and_attrs(**NOISY)
    s = matmul_session(W, attrs=attrs, seeds=(99,), call_offsets=(1000,), threads=2)
    outs, errors = [], []
    lock = threading.Lock()

    def worker():
        try:
            local = [s.run(None, {"X": X})[0].tobytes() for _ in range(100)]
            with lock:
                outs.extend(local)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert len(outs) == 800 and len(set(outs)) == 800
    refs = {io_mvm(W, X, io=io, mapping=mapping(), seed=99, call=1000 + i).tobytes() for i in range(800)}
    assert set(outs) == refs


def test_kernel_takes_over_from_model_local_function():
    """A node with a model-local function of the same name: with the library registered the
    kernel runs (noisy); without it, the function (here: plain X W^T)."""
    g = np.random.default_rng(7)
    W = f32(g.uniform(-0.5, 0.5, (5, 8)))
    X = f32(g.uniform(-1, 1, (3, 8)))
    fn = helper.make_function(
        DOMAIN, "AnalogMatMul", ["X", "W"], ["Y"],
        [helper.make_node("Transpose", ["W"], ["WT"]), helper.make_node("MatMul", ["X", "WT"], ["Y"])],
        opset_imports=[helper.make_opsetid("", OPSET)], attributes=["seeds", "call_offsets"])
    m = make_model("AnalogMatMul", ["X", "W"], [numpy_helper.from_array(W, "W")],
                   {"seeds": [4], "call_offsets": [0]}, functions=[fn])
    y_lib = session(m).run(None, {"X": X})[0]
    y_fn = session(m, lib=None).run(None, {"X": X})[0]
    np.testing.assert_allclose(y_fn, X @ W.T, rtol=1e-5, atol=1e-6)
    assert_close(y_lib, io_mvm(W, X, io=IOParameters().as_bindings(), mapping=mapping(), seed=4, call=0))


def test_output_shape_inference():
    """onnxruntime learns the output shapes at session creation (symbolic dims kept)."""
    if _version_tuple(ort.__version__) < ORT_SHAPE_INFERENCE:
        pytest.skip(f"onnxruntime {ort.__version__} < 1.24.1: the library gives it no shape inference "
                    "(it would crash on absent optional inputs, ort_ops/README.md)")
    def out_shape(op, x_shape, w, attrs):
        node = helper.make_node(op, ["X", "W"], ["Y"], domain=DOMAIN, **attrs)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)])
        return session(m).get_outputs()[0].shape

    assert out_shape("AnalogMatMul", ["N", "T", 7], np.ones((5, 7), np.float32), {}) == ["N", "T", 5]
    assert out_shape("AnalogConv", ["N", 4, 9, 8], np.ones((6, 2, 3, 3), np.float32),
                     {"group": 2, "strides": [2, 1], "pads": [1, 0, 1, 0]}) == ["N", 6, 5, 6]
    assert out_shape("AnalogConv", [2, 3, "L"], np.ones((4, 3, 3), np.float32), {"dilations": [2]})[:2] == [2, 4]


# --------------------------------------------------------------------------- AnalogConv


def conv_reference(X, Wt, B, stride, pad, dil, group, io, mp, seeds, call):
    """im2col (aihw_deploy.nn.modules.conv.im2col) + io_mvm per group, as AnalogConvNd does."""
    import torch

    from aihw_deploy.nn.modules.conv import im2col

    M, cg = Wt.shape[:2]
    mg = M // group
    x = torch.from_numpy(X)
    outs, size = [], None
    for gi in range(group):
        cols, size = im2col(x[:, gi * cg:(gi + 1) * cg], tuple(Wt.shape[2:]), stride, pad, dil)
        w = Wt[gi * mg:(gi + 1) * mg].reshape(mg, -1)
        c = call if isinstance(call, tuple) else (seeds[gi], call)
        outs.append(io_mvm(f32(w), f32(cols.numpy()), io=io, mapping=mp, seed=c[0], call=c[1]))
    y = np.concatenate(outs, 1)
    if B is not None:
        y = y + B
    y = y.reshape((X.shape[0],) + tuple(size) + (M,))
    return np.moveaxis(y, -1, 1)


CONV_CASES = [
    # d, N, C, M, spatial, kernel, stride, pad, dil, group
    (1, 2, 4, 6, (11,), (3,), (2,), (1,), (1,), 2),
    (1, 1, 3, 5, (9,), (2,), (1,), (0,), (3,), 1),
    (2, 2, 3, 4, (7, 6), (3, 2), (1, 2), (1, 0), (1, 1), 1),
    (2, 1, 6, 9, (8, 8), (3, 3), (2, 1), (2, 1), (2, 1), 3),
    (3, 2, 2, 4, (5, 6, 4), (2, 3, 2), (1, 2, 1), (1, 0, 1), (1, 1, 2), 2),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"conv{c[0]}d_g{c[-1]}")
def test_conv_matches_im2col_io_mvm(case):
    d, N, C, M, S, k, st, pd, dl, group = case
    g = np.random.default_rng(10 + d)
    Wt = f32(g.uniform(-0.5, 0.5, (M, C // group) + k))
    B = f32(g.normal(size=M))
    X = f32(g.normal(size=(N, C) + S))
    io, attrs = io_and_attrs(**NOISY)
    seeds = [100 + i for i in range(group)]
    offs = [5 * i for i in range(group)]
    attrs.update(kernel_shape=list(k), strides=list(st), pads=list(pd) * 2, dilations=list(dl), group=group,
                 seeds=seeds, call_offsets=offs, max_input_size=16, max_output_size=16)
    m = make_model("AnalogConv", ["X", "W", "B"],
                   [numpy_helper.from_array(Wt, "W"), numpy_helper.from_array(B, "B")], attrs)
    s = session(m)
    mp = mapping(16, 16)
    for r in range(2):
        y = s.run(None, {"X": X})[0]
        cg, mg = C // group, M // group
        ref = np.concatenate([
            conv_reference(X[:, gi * cg:(gi + 1) * cg], Wt[gi * mg:(gi + 1) * mg], None, st, pd, dl, 1, io, mp,
                           None, (seeds[gi], offs[gi] + r))
            for gi in range(group)
        ], 1) + B.reshape((1, M) + (1,) * d)
        assert_close(y, ref)
    # geometry check against torch's convolution with noise off
    import torch

    _, quiet = io_and_attrs(is_perfect=True)
    quiet.update(kernel_shape=list(k), strides=list(st), pads=list(pd) * 2, dilations=list(dl), group=group)
    y = session(make_model("AnalogConv", ["X", "W"], [numpy_helper.from_array(Wt, "W")], quiet)).run(None, {"X": X})[0]
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[d]
    ref = conv(torch.from_numpy(X), torch.from_numpy(Wt), stride=st, padding=pd, dilation=dl, groups=group).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_conv_seed_input_uses_seed_call_zero_for_every_group():
    g = np.random.default_rng(20)
    Wt = f32(g.uniform(-0.5, 0.5, (4, 1, 3)))
    X = f32(g.normal(size=(2, 2, 10)))
    io, attrs = io_and_attrs(**NOISY)
    attrs.update(group=2, seeds=[1, 2], call_offsets=[0, 0])
    m = make_model("AnalogConv", ["X", "W", "", "seed"], [numpy_helper.from_array(Wt, "W")], attrs)
    s = session(m)
    y = s.run(None, {"X": X, "seed": np.array(555, np.int64)})[0]
    ref = conv_reference(X, Wt, None, (1,), (0,), (1,), 2, io, mapping(), None, (555, 0))
    assert_close(y, ref)
    assert np.array_equal(y, s.run(None, {"X": X, "seed": np.array(555, np.int64)})[0])


# --------------------------------------------------------------------------- PCM noise model

T_CASES = [0.0, 3600.0, 365 * 24 * 3600.0]


def pcm_reference(W, X, io, mp, noise, comp, t, seed, program_seed, call):
    pw = inf.pcm_program(W, noise, program_seed)
    kinds = inf.DriftCompensationType
    ctype = {"none": kinds.NONE, "global": kinds.GLOBAL, "per_column": kinds.PER_COLUMN}[comp]
    wt = inf.pcm_weights_at(pw, noise, t, program_seed, 1)
    alpha = None
    if comp != "none":
        ref = inf.drift_readout(inf.pcm_weights_at(pw, noise, 0.0, program_seed, 0), io, mp, ctype,
                                seed ^ READOUT_XOR, 0)
        alpha = f32(ref / inf.drift_readout(wt, io, mp, ctype, seed ^ READOUT_XOR, 0))
    return io_mvm(wt, X, io=io, mapping=mp, alpha=alpha, seed=seed, call=call)


@pytest.mark.parametrize("t", T_CASES)
@pytest.mark.parametrize("comp", ["none", "global", "per_column"])
def test_pcm_matmul_matches_python_chip(t, comp):
    g = np.random.default_rng(30)
    M, K = 24, 40
    W = f32(g.uniform(-0.8, 0.8, (M, K)))
    X = f32(g.normal(size=(6, K)))
    io, attrs = io_and_attrs(**NOISY)
    noise = inf.PCMNoiseParameters()
    noise.g_max, noise.prog_noise_scale = 20.0, 1.5
    attrs.update(noise_model="pcm", g_max=20.0, prog_noise_scale=1.5, drift_compensation=comp, t_inference=t,
                 program_seeds=[777], max_input_size=32, max_output_size=16)
    mp = mapping(32, 16)
    s = matmul_session(W, attrs=attrs, seeds=(31,), call_offsets=(2,))
    for i in range(2):
        ref = pcm_reference(W, X, io, mp, noise, comp, t, 31, 777, 2 + i)
        assert_close(s.run(None, {"X": X})[0], ref)


def test_pcm_t_inference_input_overrides_attribute():
    g = np.random.default_rng(31)
    W = f32(g.uniform(-0.5, 0.5, (10, 20)))
    X = f32(g.normal(size=(3, 20)))
    io, attrs = io_and_attrs()
    attrs.update(noise_model="pcm", drift_compensation="global", t_inference=0.0, program_seeds=[8])
    s = matmul_session(W, attrs=attrs, seeds=(4,), call_offsets=(0,), extra_inputs=("", "t_inference"))
    noise = inf.PCMNoiseParameters()
    for i, t in enumerate([3600.0, 0.0, 3600.0, 86400.0]):
        y = s.run(None, {"X": X, "t_inference": np.array(t, np.float32)})[0]
        assert_close(y, pcm_reference(W, X, io, mapping(), noise, "global", t, 4, 8, i))
    raises_with(lambda: s.run(None, {"X": X, "t_inference": np.array(-1.0, np.float32)}), "t_inference")
    raises_with(lambda: s.run(None, {"X": X, "t_inference": np.array(np.nan, np.float32)}), "t_inference")


def test_pcm_matches_inference_tile_eval_forward():
    """Same seeds and call order -> the numbers of InferenceTile in eval mode (programmed, drifted)."""
    from aihw_deploy.simulator.configs import InferenceRPUConfig
    from aihw_deploy.simulator.configs.inference_parameters import PerColumnDriftCompensation
    from aihw_deploy.simulator.tiles import InferenceTile

    g = np.random.default_rng(32)
    M, K, t = 12, 18, 7200.0
    cfg = InferenceRPUConfig(drift_compensation=PerColumnDriftCompensation())
    tile = InferenceTile(M, K, cfg)
    W = f32(g.uniform(-0.5, 0.5, (M, K)))
    tile.set_weights(W)
    tile.seed, tile.call = 123456789, 4
    tile.training = False
    tile.program(seed=2468)
    tile.drift(t)
    X = f32(g.normal(size=(5, K)))
    import torch

    ys = [tile.forward(torch.from_numpy(X)).numpy() for _ in range(2)]
    _, attrs = io_and_attrs()
    attrs.update(noise_model="pcm", drift_compensation="per_column", t_inference=t, program_seeds=[2468])
    s = matmul_session(W, attrs=attrs, seeds=(123456789,), call_offsets=(4,))
    for y in ys:
        assert_close(s.run(None, {"X": X})[0], y)


def test_pcm_weights_as_graph_input_programmed_lazily():
    """W not a constant: the chip is programmed at the first run, and again when W changes."""
    g = np.random.default_rng(34)
    W1, W2 = f32(g.uniform(-0.5, 0.5, (8, 10))), f32(g.uniform(-0.5, 0.5, (8, 10)))
    X = f32(g.normal(size=(3, 10)))
    io, attrs = io_and_attrs(**NOISY)
    attrs.update(noise_model="pcm", drift_compensation="global", t_inference=100.0, program_seeds=[6])
    s = matmul_session(W1, attrs=attrs, seeds=(2,), call_offsets=(0,), w_constant=False)
    noise = inf.PCMNoiseParameters()
    for i, W in enumerate([W1, W1, W2, W1]):
        assert_close(s.run(None, {"X": X, "W": W})[0], pcm_reference(W, X, io, mapping(), noise, "global", 100.0, 2, 6, i))


def test_pcm_conv_groups():
    g = np.random.default_rng(33)
    Wt = f32(g.uniform(-0.5, 0.5, (4, 2, 3, 3)))
    X = f32(g.normal(size=(1, 4, 6, 6)))
    io, attrs = io_and_attrs(**NOISY)
    attrs.update(noise_model="pcm", drift_compensation="global", t_inference=60.0, group=2, seeds=[1, 2],
                 call_offsets=[0, 3], program_seeds=[10, 20], pads=[1, 1, 1, 1])
    s = session(make_model("AnalogConv", ["X", "W"], [numpy_helper.from_array(Wt, "W")], attrs))
    y = s.run(None, {"X": X})[0]
    import torch

    from aihw_deploy.nn.modules.conv import im2col

    noise = inf.PCMNoiseParameters()
    parts = []
    for gi in range(2):
        cols, size = im2col(torch.from_numpy(X[:, 2 * gi:2 * gi + 2]), (3, 3), (1, 1), (1, 1), (1, 1))
        w = f32(Wt[2 * gi:2 * gi + 2].reshape(2, -1))
        parts.append(pcm_reference(w, f32(cols.numpy()), io, mapping(), noise, "global", 60.0, [1, 2][gi],
                                   [10, 20][gi], [0, 3][gi]))
    ref = np.moveaxis(np.concatenate(parts, 1).reshape(1, 6, 6, 4), -1, 1)
    assert_close(y, ref)


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small():
    g = np.random.default_rng(40)
    return f32(g.uniform(-0.5, 0.5, (4, 6))), f32(g.normal(size=(3, 6)))


def test_bad_input_shapes(small):
    W, X = small
    s = matmul_session(W, B=np.zeros(4, np.float32))
    raises_with(lambda: s.run(None, {"X": np.zeros((3, 5), np.float32)}), "AnalogMatMul", "K = 6")
    raises_with(lambda: s.run(None, {"X": np.array(1.0, dtype=np.float32)}), "AnalogMatMul", "rank")
    y = s.run(None, {"X": np.zeros((0, 6), np.float32)})[0]
    assert y.shape == (0, 4)
    raises_with(lambda: matmul_session(W, B=np.zeros(5, np.float32)).run(None, {"X": X}), "input B", "[4]")
    raises_with(lambda: matmul_session(W[0]).run(None, {"X": X}), "input W must be a matrix")


def test_nan_and_inf_inputs_are_rejected(small):
    W, X = small
    s = matmul_session(W)
    Xn = X.copy()
    Xn[1, 2] = np.nan
    raises_with(lambda: s.run(None, {"X": Xn}), "AnalogMatMul: input X contains NaN", "node 'analogmatmul_0'")
    Xn[1, 2] = np.inf
    raises_with(lambda: s.run(None, {"X": Xn}), "AnalogMatMul: input X contains Inf")
    Wn = W.copy()
    Wn[0, 0] = np.nan
    raises_with(lambda: matmul_session(Wn), "input W contains NaN")
    s.run(None, {"X": X})  # the session still works after errors


@pytest.mark.parametrize("attrs,needles", [
    ({"out_noise": -0.1}, ["out_noise"]),
    ({"inp_bound": 0.0}, ["inp_bound"]),
    ({"noise_management": "abs_maxx"}, ["noise_management", "abs_maxx"]),
    ({"bound_management": "sometimes"}, ["bound_management"]),
    ({"w_noise_type": "loud"}, ["w_noise_type"]),
    ({"noise_model": "rram"}, ["noise_model", "rram"]),
    ({"drift_compensation": "daily"}, ["drift_compensation"]),
    ({"prog_coeff": [0.1, 0.2]}, ["prog_coeff", "3"]),
    ({"prog_coeff": 0.1}, ["prog_coeff", "list of floats"]),
    ({"g_max": 1.0, "g_min": 2.0}, ["g_max"]),
    ({"t_0": -1.0}, ["t_0"]),
    ({"t_inference": -5.0}, ["t_inference"]),
    ({"is_perfect": 2}, ["is_perfect"]),
    ({"max_input_size": 0}, ["max_input_size"]),
    ({"out_noise": "loud"}, ["out_noise", "float"]),
    ({"seeds": [1, 2]}, ["seeds", "1 value"]),
    ({"program_seeds": [1, 2, 3]}, ["program_seeds"]),
    ({"call_offsets": [-1]}, ["call_offsets"]),
])
def test_invalid_attributes(small, attrs, needles):
    W, _ = small
    a = dict(attrs)
    seeds = None if "seeds" in a else (1,)
    offs = None if "call_offsets" in a else (0,)
    raises_with(lambda: matmul_session(W, attrs=a, seeds=seeds, call_offsets=offs), "AnalogMatMul", *needles)


@pytest.mark.parametrize("attrs,needles", [
    ({"pads": [1, 0]}, ["pads", "symmetric"]),
    ({"strides": [0]}, ["strides"]),
    ({"group": 3}, ["group"]),
    ({"kernel_shape": [5]}, ["kernel_shape"]),
    ({"dilations": [1, 1]}, ["dilations"]),
    ({"auto_pad": "SAME_UPPER"}, ["auto_pad"]),
])
def test_invalid_conv_attributes(attrs, needles):
    Wt = np.ones((4, 2, 3), np.float32)
    m = make_model("AnalogConv", ["X", "W"], [numpy_helper.from_array(Wt, "W")], attrs)
    raises_with(lambda: session(m), "AnalogConv", *needles)


def test_bad_conv_inputs():
    Wt = np.ones((4, 2, 3, 3), np.float32)
    s = session(make_model("AnalogConv", ["X", "W"], [numpy_helper.from_array(Wt, "W")], {"group": 2}))
    raises_with(lambda: s.run(None, {"X": np.zeros((1, 4, 5), np.float32)}), "AnalogConv", "rank 4")
    raises_with(lambda: s.run(None, {"X": np.zeros((1, 3, 5, 5), np.float32)}), "AnalogConv", "channels")
    raises_with(lambda: s.run(None, {"X": np.zeros((1, 4, 2, 5), np.float32)}), "AnalogConv", "kernel span")
    X = np.zeros((1, 4, 5, 5), np.float32)
    X[0, 1, 2, 2] = np.nan
    raises_with(lambda: s.run(None, {"X": X}), "AnalogConv: input X contains NaN")
    assert s.run(None, {"X": np.ones((2, 4, 5, 5), np.float32)})[0].shape == (2, 4, 3, 3)


def test_session_config_num_threads(small):
    W, X = small
    raises_with(lambda: matmul_session(W, **{"aihw.num_threads": "many"}), "aihw.num_threads")
    y1 = matmul_session(W, **{"aihw.num_threads": "1"}).run(None, {"X": X})[0]
    y0 = matmul_session(W, **{"aihw.num_threads": "0"}).run(None, {"X": X})[0]  # 0: all cores (the default)
    np.testing.assert_array_equal(y1, y0)  # results do not depend on the thread count


# --------------------------------------------------------------------------- absent optional inputs, old runtimes

# A child process: sessions for the models in argv[2] (model_<name>.onnx + feeds_<name>.npz,
# feeds as run<i>__<input>), with the library argv[1]; outputs and output shapes to argv[3].
# It needs only numpy and onnxruntime, so PYTHONPATH can put another onnxruntime in front.
_CHILD = r"""
import glob, json, os, sys
import numpy as np
import onnxruntime as ort

lib, models, out = sys.argv[1:4]
res = {"version": ort.__version__, "file": ort.__file__, "shapes": {}}
arrays = {}
for path in sorted(glob.glob(os.path.join(models, "model_*.onnx"))):
    name = os.path.basename(path)[len("model_"):-len(".onnx")]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 4
    so.register_custom_ops_library(lib)
    print("session", name, flush=True)
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    shape = s.get_outputs()[0].shape
    res["shapes"][name] = list(shape) if isinstance(shape, (list, tuple)) else shape
    feeds = np.load(os.path.join(models, "feeds_" + name + ".npz"))
    runs = sorted({k.split("__")[0] for k in feeds.files}, key=lambda r: int(r[3:]))
    for r in runs:
        run_feeds = {k.split("__")[1]: feeds[k] for k in feeds.files if k.startswith(r + "__")}
        arrays[name + "__" + r] = s.run(None, run_feeds)[0]
np.savez(os.path.join(out, "outputs.npz"), **arrays)
with open(os.path.join(out, "result.json"), "w") as f:
    json.dump(res, f)
"""


def _ort121_path(tmp_path_factory):
    """A copy of onnxruntime 1.21 (the oldest supported runtime) for PYTHONPATH, or None.

    Looked for (never downloaded): $AIHW_ORT121 (a folder holding the onnxruntime package, or a
    wheel file), /tmp/ort121 (an unpacked wheel), a wheel in /tmp/ort121dl.  Get one with
    `pip download onnxruntime==1.21.0 --no-deps -d /tmp/ort121dl`.
    """
    cands = [os.environ.get("AIHW_ORT121", ""), "/tmp/ort121"]
    cands += sorted(glob.glob("/tmp/ort121dl/onnxruntime-1.21*.whl"))
    for c in cands:
        if not c or not os.path.exists(c):
            continue
        if os.path.isdir(c):
            if (os.path.isdir(os.path.join(c, "onnxruntime"))
                    and glob.glob(os.path.join(c, "onnxruntime-1.21*.dist-info"))):
                return c
        elif c.endswith(".whl") and os.path.basename(c).startswith("onnxruntime-1.21"):
            import zipfile

            d = str(tmp_path_factory.mktemp("ort121"))
            with zipfile.ZipFile(c) as z:
                z.extractall(d)
            return d
    return None


def _absent_input_models(d):
    """Models whose custom node has an absent optional input ("") before a given one, with their
    feeds and reference outputs ({name: [ref per run]})."""
    g = np.random.default_rng(77)
    io, noisy = io_and_attrs(**NOISY)
    refs = {}

    def save(name, m, runs):
        onnx.save(m, os.path.join(d, f"model_{name}.onnx"))
        np.savez(os.path.join(d, f"feeds_{name}.npz"),
                 **{f"run{i}__{k}": v for i, feeds in enumerate(runs) for k, v in feeds.items()})

    # 1. seed absent, t_inference given (B given): the reported crash.  PCM chip with drift.
    W = f32(g.uniform(-0.5, 0.5, (5, 12)))
    B = f32(g.normal(size=5))
    X = f32(g.normal(size=(3, 12)))
    io0, attrs = io_and_attrs()
    attrs.update(noise_model="pcm", drift_compensation="global", t_inference=0.0, seeds=[4], call_offsets=[0],
                 program_seeds=[8])
    m = make_model("AnalogMatMul", ["X", "W", "B", "", "t_inference"],
                   [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")], attrs)
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 12]))
    ts = [3600.0, 86400.0]
    save("matmul_t", m, [{"X": X, "t_inference": np.array(t, np.float32)} for t in ts])
    noise = inf.PCMNoiseParameters()
    refs["matmul_t"] = [pcm_reference(W, X, io0, mapping(), noise, "global", t, 4, 8, i) + B
                        for i, t in enumerate(ts)]

    # 2. B and seed absent, t_inference given (no noise model: t is checked, weights are W).
    attrs = dict(noisy, seeds=[3], call_offsets=[10])
    m = make_model("AnalogMatMul", ["X", "W", "", "", "t_inference"], [numpy_helper.from_array(W, "W")], attrs)
    save("matmul_b_seed_absent", m, [{"X": X, "t_inference": np.array(1.0, np.float32)}] * 2)
    refs["matmul_b_seed_absent"] = [io_mvm(W, X, io=io, mapping=mapping(), seed=3, call=10 + i) for i in range(2)]

    # 3. B absent, seed given (>= 0: generator (seed, 0); < 0: the kernel's call counter).
    m = make_model("AnalogMatMul", ["X", "W", "", "seed"], [numpy_helper.from_array(W, "W")], attrs)
    save("matmul_seed", m, [{"X": X, "seed": np.array(v, np.int64)} for v in (42, -1, 42, -1)])
    refs["matmul_seed"] = [io_mvm(W, X, io=io, mapping=mapping(), seed=s, call=c)
                           for s, c in ((42, 0), (3, 10), (42, 0), (3, 11))]

    # 4. AnalogConv with B and seed absent, t_inference given.
    Wt = f32(g.uniform(-0.5, 0.5, (4, 1, 3)))
    Xc = f32(g.normal(size=(2, 2, 10)))
    attrs = dict(noisy, group=2, seeds=[1, 2], call_offsets=[0, 0])
    m = make_model("AnalogConv", ["X", "W", "", "", "t_inference"], [numpy_helper.from_array(Wt, "W")], attrs)
    save("conv_t", m, [{"X": Xc, "t_inference": np.array(5.0, np.float32)}])
    refs["conv_t"] = [conv_reference(Xc, Wt, None, (1,), (0,), (1,), 2, io, mapping(), [1, 2], 0)]
    return refs


@pytest.mark.parametrize("runtime", ["installed", "1.21"])
def test_absent_optional_input_before_a_given_one(runtime, tmp_path, tmp_path_factory):
    """An empty input name ("" = absent optional input, e.g. seed) before a given input (t_inference):
    onnxruntime < 1.24 segfaulted at session creation while building the context for the op's
    shape-inference function (it dereferences the null type of the absent input).  Run in a child
    process (a crash must fail the test, not kill pytest), with the installed onnxruntime and with
    1.21, the oldest supported one."""
    env = dict(os.environ)
    if runtime == "1.21":
        path = _ort121_path(tmp_path_factory)
        if path is None:
            pytest.skip("no copy of onnxruntime 1.21: set AIHW_ORT121 to an unpacked wheel or a wheel file, or "
                        "`pip download onnxruntime==1.21.0 --no-deps -d /tmp/ort121dl` (the test never downloads)")
        env["PYTHONPATH"] = os.pathsep.join([path] + [p for p in [env.get("PYTHONPATH")] if p])
    models, out = tmp_path / "models", tmp_path / "out"
    models.mkdir()
    out.mkdir()
    refs = _absent_input_models(str(models))
    p = subprocess.run([sys.executable, "-c", _CHILD, LIB, str(models), str(out)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, (f"child exited with {p.returncode}"
                               f"{' (SIGSEGV)' if p.returncode == -11 else ''}\n{p.stdout}\n{p.stderr[-4000:]}")
    res = json.loads((out / "result.json").read_text())
    if runtime == "1.21":
        assert res["version"].startswith("1.21."), res
    else:
        assert res["version"] == ort.__version__, res
    ys = np.load(out / "outputs.npz")
    for name, rs in refs.items():
        for i, ref in enumerate(rs):
            assert_close(ys[f"{name}__run{i}"], ref)
    # Runtimes that pass absent inputs to shape inference (>= 1.24.1) still learn the output shape.
    if _version_tuple(res["version"]) >= ORT_SHAPE_INFERENCE:
        assert res["shapes"]["matmul_t"] == ["N", 5], res["shapes"]
