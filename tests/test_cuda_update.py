"""CUDA twin of the pulsed update (``rpu_base.cuda.pulsed_update``, ``exact_update``) against the CPU
tile (``AnalogTile.update``) and against SPEC §2.

Marked ``cuda``: the module skips without a CUDA build of rpucuda and a GPU.  The same kernels are
played on the host, without a GPU, by tests/test_cuda_emulation_update.py (bit for bit).

What must agree (rpucuda/cuda/pulsed_update_kernels.h):
 * with dw_min_std = 0: every weight, bit for bit, for ConstantStep, LinearStep and SoftBounds;
   ExpStep and PowStep call expf/powf, whose CUDA versions differ from the host's libm by an ulp
   or two, so per pulse the step differs by ~1e-7 relative: after at most a few hundred pulses
   of 1e-3 the weights agree to 1e-6;
 * ConstantStep cross-points updated by the batch-aggregated step (no bound within reach): bit for
   bit also with dw_min_std > 0 (the same normals);
 * pulse-by-pulse updates with dw_min_std > 0 draw their cycle-to-cycle noise from another stream
   than the CPU: the noise part of the change (noisy minus noise-free result, the noise-free
   results being identical) has the same mean and variance, to 5 standard errors over the
   cross-points.
"""

import numpy as np
import pytest
import torch
from conftest import F32_EPS, analog_tile, f32

from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.parameters import (
    ConstantStepDevice,
    ExpStepDevice,
    FloatingPointDevice,
    LinearStepDevice,
    PowStepDevice,
    PulseType,
    SoftBoundsDevice,
    UpdateParameters,
)


from conftest import cuda_only  # noqa: E402

pytestmark = cuda_only()

DEVICE = torch.device("cuda")
DW_MIN = 0.001
DEVICES = {
    "ConstantStep": ConstantStepDevice,
    "LinearStep": LinearStepDevice,
    "SoftBounds": SoftBoundsDevice,
    "ExpStep": ExpStepDevice,
    "PowStep": PowStepDevice,
}
EXACT_DEVICES = ("ConstantStep", "LinearStep", "SoftBounds")  # no libm call in the pulse


def _dev_index():
    return DEVICE.index if DEVICE.index is not None else torch.cuda.current_device()


def _stream():
    return int(torch.cuda.current_stream(_dev_index()).cuda_stream)


def dev(a):
    return torch.from_numpy(f32(a)).to(DEVICE)


def host(t):
    torch.cuda.synchronize()
    return t.detach().cpu().numpy()


def inputs(seed, M, K, N, xscale=1.0, dscale=1.0):
    g = np.random.default_rng(seed)
    X = g.uniform(-xscale, xscale, size=(N, K))
    D = g.uniform(-dscale, dscale, size=(N, M))
    X[g.random(X.shape) < 0.05] = 0.0  # lines without pulses
    D[g.random(D.shape) < 0.05] = 0.0
    return f32(X), f32(D)


def device_params(name, dw_min_std=0.0, **kw):
    return DEVICES[name](dw_min=DW_MIN, dw_min_std=dw_min_std, construction_seed=3, **kw)


def cpu_and_gpu(device, up, X, D, lr, w_init=0.3, seed=7, call=5, wseed=1):
    """The same update on a CPU tile and with rpu_base.cuda.pulsed_update (same start weights,
    device cells, seed and call index).  Returns (W0, W_cpu, W_gpu)."""
    N, K = X.shape
    M = D.shape[1]
    t = analog_tile(M, K, device=device, update=up, seed=seed)
    t.learning_rate = lr
    t.set_weights(f32(np.random.default_rng(wseed).uniform(-w_init, w_init, size=(M, K))))
    W0 = t.get_weights()
    cells = t.get_device_arrays()
    t.set_generator(seed, call)
    t.update(X, D)
    W_cpu = t.get_weights()

    Wd, Xd, Dd, Cd = dev(W0), dev(X), dev(D), dev(cells)
    rpu_base.cuda.pulsed_update(Wd.data_ptr(), M, K, Xd.data_ptr(), Dd.data_ptr(), N, lr, t.update_parameters,
                                t.device, Cd.data_ptr(), seed, call, _stream(), _dev_index())
    return W0, W_cpu, host(Wd)


def up_params(**kw):
    return UpdateParameters(**kw).as_bindings()


# ---- exact update ----------------------------------------------------------------------------------


@pytest.mark.parametrize("M,K,N", [(9, 11, 5), (300, 257, 64)])
def test_exact_update_matches_numpy(M, K, N):
    g = np.random.default_rng(1)
    X, D = f32(g.normal(size=(N, K))), f32(g.normal(size=(N, M)))
    W0 = f32(g.uniform(-0.3, 0.3, size=(M, K)))
    lr = 0.05
    Wd, Xd, Dd = dev(W0), dev(X), dev(D)  # (held: the pointers must outlive the call)
    rpu_base.cuda.exact_update(Wd.data_ptr(), M, K, Xd.data_ptr(), Dd.data_ptr(), N, lr, _stream(), _dev_index())
    ref = W0.astype(np.float64) - lr * D.astype(np.float64).T @ X.astype(np.float64)
    # float32 sums of N products, any order: |error| <= lr sum|d||x| 2 N eps + |W| eps
    tol = lr * np.abs(D.astype(np.float64)).T @ np.abs(X.astype(np.float64)) * 2 * N * F32_EPS
    assert np.all(np.abs(host(Wd) - ref) <= tol + np.abs(ref) * F32_EPS + 1e-30)


@pytest.mark.parametrize("case", ["pulse_type NONE", "FloatingPoint device"])
def test_pulsed_update_falls_back_to_exact(case):
    X, D = inputs(2, 7, 13, 6)
    if case == "pulse_type NONE":
        device, up = device_params("ConstantStep", w_max=10.0, w_min=-10.0), up_params(pulse_type=PulseType.NONE)
    else:
        device, up = FloatingPointDevice(), up_params()
    W0, W_cpu, W_gpu = cpu_and_gpu(device, up, X, D, lr=0.1)
    ref = W0.astype(np.float64) - 0.1 * D.astype(np.float64).T @ X.astype(np.float64)
    tol = 0.1 * np.abs(D.astype(np.float64)).T @ np.abs(X.astype(np.float64)) * 2 * X.shape[0] * F32_EPS
    tol += np.abs(ref) * F32_EPS
    assert np.all(np.abs(W_gpu - ref) <= tol) and np.all(np.abs(W_cpu - ref) <= tol)


# ---- CPU parity, dw_min_std = 0 -----------------------------------------------------------------------

# (pulse_type, desired_bl, update_management, update_bl_management, fixed_bl, sto_round, lr, dscale):
# lr max|x| max|d| / dw_min picks BL and with it the train layout (one sample per 32-bit word for
# BL > 8, 2-8 samples per word for BL <= 8, two words for BL > 32).
VARIANTS = {
    "bl31": (PulseType.STOCHASTIC_COMPRESSED, 31, True, True, True, False, 0.01, 4.0),
    "stochastic noUM noBLM": (PulseType.STOCHASTIC, 31, False, False, True, False, 0.01, 4.0),
    "per-sample BL": (PulseType.STOCHASTIC_COMPRESSED, 31, True, True, False, False, 0.01, 2.0),
    "bl64": (PulseType.STOCHASTIC_COMPRESSED, 64, True, True, True, False, 0.02, 4.0),
    "BL<=8": (PulseType.STOCHASTIC_COMPRESSED, 31, True, True, True, False, 0.002, 3.0),
    "BL 1": (PulseType.STOCHASTIC_COMPRESSED, 31, True, True, True, False, 0.0003, 3.0),
    "implicit": (PulseType.DETERMINISTIC_IMPLICIT, 31, True, True, True, False, 0.01, 4.0),
    "implicit sto_round": (PulseType.DETERMINISTIC_IMPLICIT, 31, True, True, True, True, 0.01, 4.0),
}


def variant(name):
    pt, bl, um, ublm, fixed, sto, lr, dscale = VARIANTS[name]
    return up_params(pulse_type=pt, desired_bl=bl, update_management=um, update_bl_management=ublm,
                     fixed_bl=fixed, sto_round=sto), lr, dscale


def assert_parity(name, W0, W_cpu, W_gpu):
    assert np.mean(W_cpu != W0) > 0.5  # the update did something
    if name in EXACT_DEVICES:
        bad = W_cpu != W_gpu
        assert not bad.any(), f"{bad.sum()} of {bad.size} weights differ, e.g. {W_cpu[bad][:4]} vs {W_gpu[bad][:4]}"
    else:
        np.testing.assert_allclose(W_gpu, W_cpu, rtol=0, atol=1e-6)


@pytest.mark.parametrize("var", list(VARIANTS))
@pytest.mark.parametrize("name", list(DEVICES))
def test_parity_with_cpu_without_cycle_noise(name, var):
    up, lr, dscale = variant(var)
    X, D = inputs(3, 70, 150, 45, dscale=dscale)
    W0, W_cpu, W_gpu = cpu_and_gpu(device_params(name), up, X, D, lr)
    assert_parity(name, W0, W_cpu, W_gpu)


@pytest.mark.parametrize("var", ["bl31", "BL<=8", "implicit"])
def test_parity_constant_step_near_bounds(var):
    # narrow bounds: most cross-points might reach a bound and go pulse by pulse
    up, lr, dscale = variant(var)
    X, D = inputs(4, 70, 150, 45, dscale=dscale)
    W0, W_cpu, W_gpu = cpu_and_gpu(device_params("ConstantStep", w_max=0.05, w_min=-0.05), up, X, D, lr,
                                   w_init=0.05)
    assert_parity("ConstantStep", W0, W_cpu, W_gpu)


@pytest.mark.parametrize("name", ["ConstantStep", "SoftBounds"])
def test_parity_several_chunks_and_tiles(name):
    # 2100 samples: with desired_bl 31 the chunks hold 2032 samples (two chunks here); BL is 2
    # (packed words); 130 x 300: several tiles
    up, lr, dscale = variant("bl31")
    X, D = inputs(5, 130, 300, 2100, dscale=dscale)
    W0, W_cpu, W_gpu = cpu_and_gpu(device_params(name, w_max=5.0, w_min=-5.0), up, X, D, lr / 20)
    assert_parity(name, W0, W_cpu, W_gpu)


def test_parity_large_tile():
    # a 512 x 512 tile (the default mapping), batch 256
    up, lr, dscale = variant("bl31")
    X, D = inputs(6, 512, 512, 256, dscale=dscale)
    W0, W_cpu, W_gpu = cpu_and_gpu(device_params("ConstantStep"), up, X, D, lr)
    assert_parity("ConstantStep", W0, W_cpu, W_gpu)


def test_on_a_side_stream():
    up, lr, dscale = variant("bl31")
    X, D = inputs(7, 40, 60, 30, dscale=dscale)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        W0, W_cpu, W_gpu = cpu_and_gpu(device_params("ConstantStep"), up, X, D, lr)
    assert_parity("ConstantStep", W0, W_cpu, W_gpu)


# ---- dw_min_std > 0 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("var", ["BL<=8", "implicit"])
def test_constant_step_aggregated_path_is_exact_with_noise(var):
    # few pulses (lr max|x| max|d| / dw_min = 1.2), bounds far away: every cross-point takes the
    # batch-aggregated step
    up, _, _ = variant(var)
    X, D = inputs(8, 70, 150, 200, dscale=4.0)
    device = device_params("ConstantStep", dw_min_std=0.3, w_max=2.0, w_min=-2.0, w_max_dtod=0.0, w_min_dtod=0.0)
    W0, W_cpu, W_gpu = cpu_and_gpu(device, up, X, D, 0.0003, w_init=0.1)
    assert np.all(W_cpu != W0)
    np.testing.assert_array_equal(W_gpu, W_cpu)


@pytest.mark.parametrize("pulse_type", [PulseType.STOCHASTIC_COMPRESSED, PulseType.DETERMINISTIC_IMPLICIT])
@pytest.mark.parametrize("name", list(DEVICES))
def test_cycle_noise_same_distribution(name, pulse_type):
    # Every cross-point sees the same x_i, d_j in all samples; the noise part of its change
    # r = W(noisy) - W(noise-free) has the same distribution on CPU and GPU (the noise-free results
    # are identical).  Mean: 5 standard errors; variance ratio: 5 * 2 sqrt(2/n).
    M, K, N = 64, 128, 60 if name != "ConstantStep" else 30
    g = np.random.default_rng(9)
    x = (0.3 + 0.7 * g.random(K)) * np.sign(g.uniform(-1, 1, K))
    d = 2.0 * (0.3 + 0.7 * g.random(M)) * np.sign(g.uniform(-1, 1, M))
    X, D = f32(np.tile(x, (N, 1))), f32(np.tile(d, (N, 1)))
    bound = 0.12 if name == "ConstantStep" else 0.6  # ConstantStep: within reach of the bound
    lr = 0.001 if name == "ConstantStep" else 0.003
    kw = dict(w_max=bound, w_min=-bound, w_max_dtod=0.0, w_min_dtod=0.0, dw_min_dtod=0.0, up_down_dtod=0.0)
    up = up_params(pulse_type=pulse_type)
    _, base_cpu, base_gpu = cpu_and_gpu(device_params(name, 0.0, **kw), up, X, D, lr, w_init=0.0)
    assert_parity(name, np.zeros_like(base_cpu), base_cpu, base_gpu)
    _, W_cpu, W_gpu = cpu_and_gpu(device_params(name, 0.3, **kw), up, X, D, lr, w_init=0.0)
    rc = (W_cpu.astype(np.float64) - base_cpu).ravel()
    rg = (W_gpu.astype(np.float64) - base_cpu).ravel()
    n = rc.size
    assert rc.var() > 0 and rg.var() > 0
    assert abs(rc.mean() - rg.mean()) <= 5 * np.sqrt((rc.var() + rg.var()) / n)
    assert abs(rg.var() / rc.var() - 1) <= 5 * 2 * np.sqrt(2 / n)


# ---- SPEC §2 on the GPU alone ----------------------------------------------------------------------------


def spec_counts(x, d, lr, up):
    """Expected coincidences per (j, i) of one sample (SPEC §2, float64): BL min(1, p_i) min(1, q_j)."""
    xmax, dmax = np.abs(x).max(), np.abs(d).max()
    ratio = lr * xmax * dmax / DW_MIN
    bl = min(up.desired_bl, max(1, int(np.ceil(ratio)))) if up.update_bl_management else up.desired_bl
    d_eff = dmax * bl / ratio if ratio > bl else dmax
    A = np.sqrt(lr / (DW_MIN * bl))
    k = np.sqrt(d_eff / xmax) if up.update_management else 1.0
    p, q = np.minimum(1, A * k * np.abs(x)), np.minimum(1, A / k * np.abs(d))
    return bl * np.outer(q, p), np.outer(q, p)


@pytest.mark.parametrize("um", [True, False])
@pytest.mark.parametrize("pulse_type", [PulseType.STOCHASTIC_COMPRESSED, PulseType.STOCHASTIC])
def test_gpu_mean_update_is_minus_lr_d_x(pulse_type, um):
    # R repetitions of one sample on a linear device: the change is -lr d x^T per repetition on
    # average; each coincidence count ~ Binomial(BL, pq), 5 standard deviations per element.
    lr, R, M, K = 0.01, 600, 8, 6
    g = np.random.default_rng(10)
    x, d = g.uniform(-1, 1, K), g.uniform(-1, 1, M)
    x /= np.abs(x).max()
    d /= np.abs(d).max()
    x, d = f32(x).astype(np.float64), f32(d).astype(np.float64)
    up = up_params(pulse_type=pulse_type, update_management=um)
    E, pq = spec_counts(x, d, lr, up)
    device = ConstantStepDevice(dw_min=DW_MIN, dw_min_dtod=0.0, dw_min_std=0.0, w_max=1000.0, w_min=-1000.0,
                                w_max_dtod=0.0, w_min_dtod=0.0, up_down=0.0, up_down_dtod=0.0)
    t = analog_tile(M, K, device=device, update=up)
    Wd, Cd = dev(np.zeros((M, K))), dev(t.get_device_arrays())
    Xd, Dd = dev(np.tile(x, (R, 1))), dev(np.tile(d, (R, 1)))
    rpu_base.cuda.pulsed_update(Wd.data_ptr(), M, K, Xd.data_ptr(), Dd.data_ptr(), R, lr, up, t.device,
                                Cd.data_ptr(), 11, 0, _stream(), _dev_index())
    mean = host(Wd).astype(np.float64) / R
    sd = DW_MIN * np.sqrt(R * E * (1 - pq)) / R
    assert np.all(np.abs(mean + lr * np.outer(d, x)) <= 5 * sd + 1e-6)
