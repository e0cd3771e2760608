"""CUDA twins of the IO pipeline and of the PCM inference model against the CPU, output by output
(``rpu_base.cuda.io_mvm``, ``pcm_program``, ``pcm_weights_at``, ``chip_reference``, ``chip_at``
against ``rpu_base.tiles.io_mvm`` and ``rpu_base.inference.*``).

Marked ``cuda``: the module skips without a CUDA build of rpucuda and a GPU (``bash
tools/gpu_check.sh`` runs it on a GPU machine).  The same code without a GPU is checked by
tests/test_cuda_emulation_io.py (host emulation, bit for bit).

Tolerances.  Random numbers are bit-identical (same Philox counters, --fmad=false), so the only
difference in the IO pipeline is the analog product: cuBLAS sums in another order than
rpucuda/analog_gemm.cpp, a relative difference of a few float eps times sqrt(K) (< 1e-5 here).
 * Without converters (inp_res = out_res = 0, no output bound) outputs agree to
   1e-5 * (|x| |W|^T + 1): noise included, which would differ by O(1) with a wrong index.
 * With an ADC an output within rounding of a step boundary may land one step away: at most 1% of
   the outputs may differ, each by at most one ADC step per input chunk (step * s_chunk * r *
   out_scale * alpha, s the noise-management scale of the chunk, r the bound-management factor).
 * PCM: programming noise is exact; drift exponents, drift and read noise go through the GPU's
   logf/expf/powf (<= 2 ulp from the host's), so conductances agree to 1e-5 relative.
"""

import numpy as np
import pytest
import torch

from aihw_deploy.inference import PCMLikeNoiseModel
from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.parameters import (
    BoundManagementType,
    IOParameters,
    MappingParameter,
    NoiseManagementType,
    WeightNoiseType,
)


from conftest import cuda_only  # noqa: E402

pytestmark = cuda_only()

DEVICE = torch.device("cuda")
BM = BoundManagementType
NM = NoiseManagementType
DC = rpu_base.inference.DriftCompensationType
ONE_YEAR = 31536000.0


def _dev_index():
    return DEVICE.index if DEVICE.index is not None else torch.cuda.current_device()


def _stream():
    return int(torch.cuda.current_stream(_dev_index()).cuda_stream)


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def dev(a):
    return torch.from_numpy(f32(a)).to(DEVICE)


def host(t):
    return t.detach().cpu().numpy()


def io_params(**kw):
    return IOParameters(**kw).as_bindings()


def mapping(inp=512, out=512):
    return MappingParameter(max_input_size=inp, max_output_size=out).as_bindings()


def res_fraction(res):
    return 0.0 if res <= 0 else (1.0 / res if res > 1 else res)


# ---- callers ------------------------------------------------------------------------------------------


def cpu_mvm(W, x, io, mp, bm=True, alpha=None, seed=0, call=0, transposed=False):
    return rpu_base.tiles.io_mvm(f32(W), f32(x), io=io, mapping=mp, bound_management=bm,
                                 alpha=None if alpha is None else f32(alpha), seed=seed, call=call,
                                 transposed=transposed)


def gpu_mvm(W, x, io, mp, bm=True, alpha=None, seed=0, call=0, transposed=False, stream=None):
    M, K = W.shape
    N = x.shape[0]
    Wd, xd = dev(W), dev(x)
    y = torch.empty(N, K if transposed else M, device=DEVICE)
    ad = None if alpha is None else dev(np.atleast_1d(alpha))
    rpu_base.cuda.io_mvm(Wd.data_ptr(), M, K, transposed, xd.data_ptr(), N, y.data_ptr(), io, mp, bm,
                         0 if ad is None else ad.data_ptr(), 0 if ad is None else ad.numel(), seed, call,
                         _stream() if stream is None else stream, _dev_index())
    return host(y)


def chunk_scales(x, io, in_chunk):
    """Noise-management scale of each row and input chunk [N, n_chunks] (SPEC §1.2), as rpucuda."""
    n_chunks = -(-x.shape[1] // in_chunk)
    s = np.zeros((x.shape[0], n_chunks))
    for c in range(n_chunks):
        xs = x[:, c * in_chunk:(c + 1) * in_chunk].astype(np.float64)
        amax = np.abs(xs).max(axis=1)
        nm = io.noise_management
        if nm == NM.NONE:
            v = np.ones_like(amax)
        elif nm == NM.MAX:
            mx = xs.max(axis=1)
            v = np.where(mx > 0, mx, amax)
        elif nm == NM.CONSTANT:
            v = np.full_like(amax, io.nm_thres if io.nm_thres > 0 else 1.0)
        elif nm == NM.AVERAGE_ABS_MAX:
            v = np.full_like(amax, amax.mean())
        else:
            v = amax
        if nm in (NM.ABS_MAX, NM.AVERAGE_ABS_MAX) and io.nm_thres > 0:
            v = np.minimum(v, io.nm_thres)
        s[:, c] = np.where(amax == 0, 0.0, v)
    return s


def assert_adc_close(y_gpu, y_cpu, x, io, in_chunk, alpha=None, r_max=1.0, frac=0.01):
    """Equal to float rounding, except at most `frac` of the outputs up to one ADC step per chunk."""
    assert y_gpu.shape == y_cpu.shape
    nan_g, nan_c = np.isnan(y_gpu), np.isnan(y_cpu)
    np.testing.assert_array_equal(nan_g, nan_c)
    g, c = np.where(nan_g, 0, y_gpu).astype(np.float64), np.where(nan_c, 0, y_cpu).astype(np.float64)
    step = res_fraction(io.out_res) * 2 * io.out_bound
    a = np.ones(y_cpu.shape[1]) if alpha is None else np.broadcast_to(np.abs(alpha), (y_cpu.shape[1],))
    quantum = (step * chunk_scales(x, io, in_chunk).sum(axis=1))[:, None] * r_max * abs(io.out_scale) * a[None, :]
    d = np.abs(g - c)
    off = d > 1e-5 * (np.abs(c) + 1e-3)
    assert off.mean() <= frac, f"{off.sum()} of {off.size} outputs differ (max {d.max():.3g})"
    worst = (d - quantum * (1 + 1e-4))[off]
    assert worst.size == 0 or worst.max() <= 1e-5, f"an output differs by more than one ADC step: {d[off].max():.4g}"


def assert_product_close(y_gpu, y_cpu, x, A, in_chunk, scale=1.0, pad=0.0):
    """Agreement of two float32 evaluations of the same pipeline without converters: the analog
    product of each chunk to 1e-5 of sum_i |x_i/s + pad| |A_oi + pad| (pad: the size of input and
    weight noise), times the chunk's scale s (AbsMax) and `scale` (out_scale * alpha)."""
    bound = np.zeros(y_cpu.shape)
    for c in range(-(-x.shape[1] // in_chunk)):
        xs = np.abs(x[:, c * in_chunk:(c + 1) * in_chunk].astype(np.float64))
        s = np.maximum(xs.max(axis=1, keepdims=True), 1e-30)
        bound += s * ((xs / s + pad) @ (np.abs(A[:, c * in_chunk:(c + 1) * in_chunk].astype(np.float64)) + pad).T)
    bound = 1e-5 * (bound + 1e-3) * np.abs(scale)
    d = np.abs(y_gpu.astype(np.float64) - y_cpu)
    assert np.all(d <= bound), f"max difference {d.max():.3g}, {np.sum(d > bound)} outputs beyond the bound"


def data(M, K, N, transposed=False, seed=0, x_scale=1.0, w_scale=0.3):
    g = np.random.default_rng(seed)
    W = f32(g.normal(size=(M, K)) * w_scale)
    x = f32(g.normal(size=(N, M if transposed else K)) * x_scale)
    return W, x


# ---- IO pipeline -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("out_scale,alpha", [(1.0, None), (2.5, "scalar"), (-0.75, "column")])
def test_perfect_io(transposed, out_scale, alpha):
    W, x = data(70, 90, 33, transposed)
    out = W.shape[1] if transposed else W.shape[0]
    a = {None: None, "scalar": f32([1.7]), "column": f32(np.linspace(0.5, 2, out))}[alpha]
    io = io_params(is_perfect=True, out_scale=out_scale, out_noise=1.0)
    y_c = cpu_mvm(W, x, io, mapping(), alpha=a, transposed=transposed)
    y_g = gpu_mvm(W, x, io, mapping(), alpha=a, transposed=transposed)
    A = W.T if transposed else W
    assert_product_close(y_g, y_c, x, A, x.shape[1], scale=out_scale * (np.ones(A.shape[0]) if a is None else a))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("w_noise_type", [WeightNoiseType.NONE, WeightNoiseType.ADDITIVE_CONSTANT,
                                          WeightNoiseType.PCM_READ])
def test_noise_is_bit_identical_without_converters(transposed, w_noise_type):
    """Input, output and weight noise on a tiled layer without DAC/ADC: equal to product rounding,
    so every noise sample has the CPU's index (a wrong one would differ by ~0.1)."""
    W, x = data(150, 130, 40, transposed, seed=1)
    io = io_params(inp_res=0.0, out_res=0.0, out_bound=0.0, inp_bound=100.0, out_noise=0.1, inp_noise=0.05,
                   w_noise=0.05, w_noise_type=w_noise_type)
    mp = mapping(48, 64)
    y_c = cpu_mvm(W, x, io, mp, seed=7, call=3, transposed=transposed)
    y_g = gpu_mvm(W, x, io, mp, seed=7, call=3, transposed=transposed)
    A = W.T if transposed else W
    assert_product_close(y_g, y_c, x, A, 64 if transposed else 48, pad=0.3)
    # another call draws other noise (the comparison above is not trivially satisfied)
    y_g2 = gpu_mvm(W, x, io, mp, seed=7, call=4, transposed=transposed)
    assert np.abs(y_g2 - y_g).mean() > 0.01


@pytest.mark.parametrize("nm", [NM.ABS_MAX, NM.MAX, NM.AVERAGE_ABS_MAX, NM.CONSTANT, NM.NONE])
@pytest.mark.parametrize("transposed", [False, True])
def test_quantized_pipeline_matches_cpu(nm, transposed):
    """SPEC defaults (7-bit DAC, 9-bit ADC, output noise) with each noise management, several tiles,
    no saturation."""
    W, x = data(200, 300, 64, transposed, seed=2, w_scale=0.1)
    io = io_params(noise_management=nm, nm_thres=2.0 if nm == NM.CONSTANT else 0.0, out_bound=40.0)
    mp = mapping(128, 96)
    in_chunk = 96 if transposed else 128
    y_c = cpu_mvm(W, x, io, mp, seed=3, call=1, transposed=transposed)
    y_g = gpu_mvm(W, x, io, mp, seed=3, call=1, transposed=transposed)
    assert_adc_close(y_g, y_c, x, io, in_chunk)


@pytest.mark.parametrize("bm", [BM.ITERATIVE, BM.ITERATIVE_WORST_CASE])
@pytest.mark.parametrize("transposed", [False, True])
def test_bound_management_matches_cpu(bm, transposed):
    """Outputs saturate: rows are redone with larger factors (several iterations)."""
    W, x = data(120, 160, 96, transposed, seed=4, w_scale=1.0)
    io = io_params(bound_management=bm, out_bound=4.0)
    mp = mapping(64, 48)
    in_chunk = 48 if transposed else 64
    y_c = cpu_mvm(W, x, io, mp, seed=5, call=2, transposed=transposed)
    y_g = gpu_mvm(W, x, io, mp, seed=5, call=2, transposed=transposed)
    r_limit = min(io.max_bm_factor, io.max_bm_res / res_fraction(io.inp_res))
    # the case does exercise bound management: without it the outputs differ
    y_nobm = cpu_mvm(W, x, io, mp, bm=False, seed=5, call=2, transposed=transposed)
    assert np.abs(y_nobm - y_c).max() > 1.0
    assert_adc_close(y_g, y_c, x, io, in_chunk, r_max=r_limit, frac=0.02)


@pytest.mark.parametrize("transposed", [False, True])
def test_stochastic_rounding_and_input_noise(transposed):
    W, x = data(100, 140, 50, transposed, seed=6)
    io = io_params(inp_sto_round=True, out_sto_round=True, inp_noise=0.03, out_bound=3.0)
    mp = mapping(64, 40)
    in_chunk = 40 if transposed else 64
    a = f32(np.linspace(0.8, 1.3, W.shape[1] if transposed else W.shape[0]))
    y_c = cpu_mvm(W, x, io, mp, alpha=a, seed=9, call=11, transposed=transposed)
    y_g = gpu_mvm(W, x, io, mp, alpha=a, seed=9, call=11, transposed=transposed)
    assert_adc_close(y_g, y_c, x, io, in_chunk, alpha=a, r_max=min(1000.0, 0.25 * 126), frac=0.02)


def test_hwa_preset_with_alpha_and_out_scale():
    W, x = data(256, 700, 128, seed=7, w_scale=0.05)
    io = io_params(inp_res=1 / 254, out_res=1 / 254, out_bound=10.0, out_noise=0.04, w_noise=0.0175,
                   w_noise_type=WeightNoiseType.PCM_READ, noise_management=NM.CONSTANT,
                   bound_management=BM.NONE, out_scale=1.5)
    a = f32(np.random.default_rng(0).uniform(0.5, 2.0, 256))
    y_c = cpu_mvm(W, x, io, mapping(), alpha=a, seed=1, call=0)
    y_g = gpu_mvm(W, x, io, mapping(), alpha=a, seed=1, call=0)
    assert_adc_close(y_g, y_c, x, io, 512, alpha=a)


def test_zero_and_nan_rows():
    W, x = data(50, 70, 12, seed=8)
    x[2] = 0.0
    x[5, 3] = np.nan
    io = io_params()
    y_c = cpu_mvm(W, x, io, mapping(32, 32), seed=2)
    y_g = gpu_mvm(W, x, io, mapping(32, 32), seed=2)
    assert np.all(y_g[2] == 0) and np.all(np.isnan(y_g[5]))
    assert_adc_close(y_g, y_c, x, io, 32)


def test_same_call_is_reproducible_and_stream_ordered():
    """Bit-identical repeats, also on a side stream (all work goes to the given stream)."""
    W, x = data(300, 400, 64, seed=9)
    io = io_params(w_noise=0.02, w_noise_type=WeightNoiseType.ADDITIVE_CONSTANT)
    y1 = gpu_mvm(W, x, io, mapping(128, 128), seed=4, call=6)
    y2 = gpu_mvm(W, x, io, mapping(128, 128), seed=4, call=6)
    np.testing.assert_array_equal(y1, y2)
    side = torch.cuda.Stream(device=DEVICE)
    with torch.cuda.stream(side):
        y3 = gpu_mvm(W, x, io, mapping(128, 128), seed=4, call=6, stream=int(side.cuda_stream))
    np.testing.assert_array_equal(y1, y3)


def test_layer_size_of_the_benchmark():
    """The benchmark's shape (4096 x 4096 in 512 x 512 tiles), smaller batch: the CPU twin agrees."""
    W, x = data(4096, 4096, 64, seed=10, w_scale=0.02)
    io = io_params()
    y_c = cpu_mvm(W, x, io, mapping(), seed=1, call=5)
    y_g = gpu_mvm(W, x, io, mapping(), seed=1, call=5)
    assert_adc_close(y_g, y_c, x, io, 512, r_max=min(1000.0, 0.25 * 126), frac=0.01)


# ---- PCM inference model ---------------------------------------------------------------------------------


def pcm(**kw):
    return PCMLikeNoiseModel(**kw).as_bindings()


class GpuChip:
    """A chip programmed on the GPU: device arrays g+, g-, nu+, nu- and the scale."""

    def __init__(self, W, p, seed):
        M, K = W.shape
        self.M, self.K = M, K
        self.arrays = [torch.empty(M, K, device=DEVICE) for _ in range(4)]
        Wd = dev(W)
        self.scale = rpu_base.cuda.pcm_program(Wd.data_ptr(), M, K, p, seed, *self.ptrs(), _stream(), _dev_index())

    def ptrs(self):
        return [a.data_ptr() for a in self.arrays]

    def state(self):
        gp, gm, nup, num = (host(a) for a in self.arrays)
        return {"scale": self.scale, "g_plus": gp, "g_minus": gm, "nu_plus": nup, "nu_minus": num}

    def weights_at(self, p, t, seed, call):
        w = torch.empty(self.M, self.K, device=DEVICE)
        rpu_base.cuda.pcm_weights_at(self.M, self.K, self.scale, *self.ptrs(), p, t, seed, call, w.data_ptr(),
                                     _stream(), _dev_index())
        return host(w)

    def reference(self, p, program_seed, io, mp, comp, tile_seed):
        ref = torch.full((self.M if comp == DC.PER_COLUMN else 1,), -1.0, device=DEVICE)
        rpu_base.cuda.chip_reference(self.M, self.K, self.scale, *self.ptrs(), p, program_seed, io, mp, comp,
                                     tile_seed, ref.data_ptr(), _stream(), _dev_index())
        return host(ref)

    def at(self, p, t, program_seed, io, mp, comp, tile_seed, ref):
        w = torch.empty(self.M, self.K, device=DEVICE)
        alpha = torch.ones(self.M if comp == DC.PER_COLUMN else 1, device=DEVICE)
        refd = dev(ref)
        rpu_base.cuda.chip_at(self.M, self.K, self.scale, *self.ptrs(), p, t, program_seed, io, mp, comp, tile_seed,
                              refd.data_ptr(), w.data_ptr(), alpha.data_ptr(), _stream(), _dev_index())
        return host(w), host(alpha)


def cpu_chip_from(chip):
    """The CPU's ProgrammedWeights holding the GPU chip's state (so drift and read noise are
    compared from the same programmed conductances)."""
    pw = rpu_base.inference.ProgrammedWeights()
    pw.set_state(chip.state())
    return pw


@pytest.mark.parametrize("kw", [{}, {"g_min": 0.5, "g_max": 20.0, "drift_scale": 0.5}, {"prog_noise_scale": 2.0}])
def test_pcm_program_matches_cpu(kw):
    g = np.random.default_rng(11)
    W = f32(g.normal(size=(64, 300)) * 0.2)
    W[3, :5] = 0.0
    p = pcm(**kw)
    cpu = rpu_base.inference.pcm_program(W, p, 21)
    st_c = cpu.get_state()
    chip = GpuChip(W, p, 21)
    assert np.float32(chip.scale) == np.float32(st_c["scale"])
    st_g = chip.state()
    # g+/g-: polynomial and max only -> bit-identical; nu: logf on the device -> 1e-5 relative
    np.testing.assert_array_equal(st_g["g_plus"], st_c["g_plus"])
    np.testing.assert_array_equal(st_g["g_minus"], st_c["g_minus"])
    np.testing.assert_allclose(st_g["nu_plus"], st_c["nu_plus"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(st_g["nu_minus"], st_c["nu_minus"], rtol=1e-5, atol=1e-7)


def test_pcm_program_zero_matrix_has_unit_scale():
    chip = GpuChip(np.zeros((8, 9), np.float32), pcm(), 1)
    assert chip.scale == 1.0
    np.testing.assert_array_equal(chip.state()["g_plus"], rpu_base.inference.pcm_program(
        np.zeros((8, 9), np.float32), pcm(), 1).get_state()["g_plus"])


@pytest.mark.parametrize("t", [0.0, 1.0, 3600.0, ONE_YEAR])
@pytest.mark.parametrize("kw", [{}, {"read_noise_scale": 0.0}, {"drift_scale": 2.0, "g_min": 1.0}])
def test_pcm_weights_at_matches_cpu(t, kw):
    g = np.random.default_rng(12)
    W = f32(g.normal(size=(40, 257)) * 0.2)
    p = pcm(**kw)
    chip = GpuChip(W, p, 5)
    cpu = cpu_chip_from(chip)
    for call in (0, 1, 9):
        w_c = rpu_base.inference.pcm_weights_at(cpu, p, t, 5, call)
        w_g = chip.weights_at(p, t, 5, call)
        np.testing.assert_allclose(w_g, w_c, rtol=1e-5, atol=1e-6 * np.abs(w_c).max())


@pytest.mark.parametrize("comp", [DC.GLOBAL, DC.PER_COLUMN])
def test_chip_reference_and_chip_at_match_cpu(comp):
    """The chip conventions (reference at t = 0 with read-noise sample 0, chip at t with sample 1,
    alpha = ref / read-out) through the GPU read-out (one-hot rows through io_mvm on the GPU)."""
    g = np.random.default_rng(13)
    W = f32(g.normal(size=(96, 200)) * 0.3)
    p = pcm()
    io = io_params(w_noise=0.02, w_noise_type=WeightNoiseType.PCM_READ)
    mp = mapping(64, 48)
    chip = GpuChip(W, p, 17)
    cpu = cpu_chip_from(chip)
    ref_c = rpu_base.inference.chip_reference(cpu, p, 17, io, mp, comp, 99)
    ref_g = chip.reference(p, 17, io, mp, comp, 99)
    # one-hot inputs make the products exact; the chip weights differ by the device's powf (read
    # noise): a read-out may move one ADC step in rare outputs, the means by far less than 1e-3
    np.testing.assert_allclose(ref_g, ref_c, rtol=1e-3)
    w_c, a_c = rpu_base.inference.chip_at(cpu, p, ONE_YEAR, 17, io, mp, comp, 99, ref_c)
    w_g, a_g = chip.at(p, ONE_YEAR, 17, io, mp, comp, 99, ref_c)
    np.testing.assert_allclose(w_g, w_c, rtol=1e-5, atol=1e-6 * np.abs(w_c).max())
    np.testing.assert_allclose(a_g, a_c, rtol=1e-3)
    assert np.all(a_g > 1.2)  # one year of drift is compensated (conductances ~0.5x)
