"""Pulsed update (SPEC §2): the mean update of every pulse type equals -lr d (x) x, against the
pulse statistics computed independently in numpy; exact updates; floating-point tiles."""

import math

import numpy as np
import pytest
from conftest import F32_EPS, analog_tile, f32, linear_device, matmul_tol

from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.parameters import FloatingPointDevice, PulseType, UpdateParameters

DW_MIN = 0.001


def spec_scales(xmax, dmax, lr, dw_min, desired_bl, um, ublm, bl_override=None):
    """SPEC §2 in float64: (BL, x probability scale, d probability scale)."""
    ratio = lr * xmax * dmax / dw_min
    bl = desired_bl
    if bl_override is not None:
        bl = bl_override
    elif ublm:
        bl = min(desired_bl, max(1, math.ceil(ratio)))
    d_eff = dmax * bl / ratio if ratio > bl else dmax
    A = math.sqrt(lr / (dw_min * bl))
    k = math.sqrt(d_eff / xmax) if um else 1.0
    return bl, A * k, A / k


def expected_counts(x, d, lr, up):
    """Expected coincidences per (j, i) of one sample: BL * min(1, p_i) * min(1, q_j)."""
    bl, xs, ds = spec_scales(np.abs(x).max(), np.abs(d).max(), lr, DW_MIN, up.desired_bl,
                             up.update_management, up.update_bl_management)
    p = np.minimum(1.0, xs * np.abs(x))
    q = np.minimum(1.0, ds * np.abs(d))
    return bl, p, q, bl * np.outer(q, p)


def float_slack(pulses, w):
    """Float32 accumulation error of `pulses` steps, in pulse counts: half an ulp of |w| per step."""
    ulp = np.spacing(np.float32(np.max(np.abs(w)) + DW_MIN)).astype(np.float64)
    return np.asarray(pulses) * ulp / 2 / DW_MIN


def pulsed_tile(M, K, up, lr, seed=0):
    t = analog_tile(M, K, device=linear_device(dw_min=DW_MIN), update=up, seed=seed)
    t.learning_rate = lr
    t.set_weights(np.zeros((M, K), np.float32))
    return t


def _xd(seed, K=6, M=8, xmax=1.0, dmax=1.0):
    g = np.random.default_rng(seed)
    x = g.uniform(-1, 1, size=K)
    d = g.uniform(-1, 1, size=M)
    x[np.argmax(np.abs(x))] = xmax * np.sign(x[np.argmax(np.abs(x))])
    x *= xmax / np.abs(x).max()
    d *= dmax / np.abs(d).max()
    return x.astype(np.float32).astype(np.float64), d.astype(np.float32).astype(np.float64)


STOCHASTIC_TYPES = [PulseType.STOCHASTIC_COMPRESSED, PulseType.STOCHASTIC]


@pytest.mark.parametrize("pulse_type", STOCHASTIC_TYPES)
@pytest.mark.parametrize("um", [True, False])
@pytest.mark.parametrize("ublm", [True, False])
def test_stochastic_mean_update_is_minus_lr_d_x(pulse_type, um, ublm):
    # x and d with max 1 each: without update management the probabilities stay <= 1 too.
    lr, R = 0.01, 600
    x, d = _xd(1)
    up = UpdateParameters(pulse_type=pulse_type, update_management=um, update_bl_management=ublm)
    bl, p, q, E = expected_counts(x, d, lr, up)
    assert p.max() <= 1 and q.max() <= 1
    np.testing.assert_allclose(E, lr * np.abs(np.outer(d, x)) / DW_MIN, rtol=1e-9)  # unclipped
    t = pulsed_tile(len(d), len(x), up, lr, seed=3)
    # R repetitions of the same sample in one batch (applied one after the other)
    t.update(f32(np.tile(x, (R, 1))), f32(np.tile(d, (R, 1))))
    dW = t.get_weights().astype(np.float64)
    mean = dW / R
    # each coincidence count ~ Binomial(BL, p q): the total over R has std sqrt(R BL pq(1-pq));
    # in weight units times dw_min; 5 sigma per element, plus float32 accumulation slack.
    sd = DW_MIN * np.sqrt(R * E * (1 - np.outer(q, p))) / R
    tol = 5 * sd + 1e-6
    assert np.all(np.abs(mean - (-lr * np.outer(d, x))) <= tol), np.max(np.abs(mean + lr * np.outer(d, x)) / tol)


@pytest.mark.parametrize("xmax,dmax", [(1.0, 0.5), (0.3, 2.0), (2.0, 0.05)])
def test_update_management_balances_unequal_scales(xmax, dmax):
    # With update management any scale ratio keeps p, q <= 1, so the update stays unbiased.
    lr, R = 0.01, 600
    x, d = _xd(2, xmax=xmax, dmax=dmax)
    up = UpdateParameters()
    bl, p, q, E = expected_counts(x, d, lr, up)
    assert p.max() <= 1 + 1e-12 and q.max() <= 1 + 1e-12
    t = pulsed_tile(len(d), len(x), up, lr, seed=4)
    t.update(f32(np.tile(x, (R, 1))), f32(np.tile(d, (R, 1))))
    mean = t.get_weights().astype(np.float64) / R
    sd = DW_MIN * np.sqrt(R * E) / R  # binomial variance <= mean
    assert np.all(np.abs(mean + lr * np.outer(d, x)) <= 5 * sd + 1e-6)


def test_no_update_management_clips_the_larger_side():
    # Without update management p_i = A |x_i| exceeds 1 when max|x| >> max|d|: the update is then
    # biased low exactly as the clipped-probability formula says.
    lr, R = 0.01, 600
    x, d = _xd(3, xmax=4.0, dmax=0.25)
    up = UpdateParameters(update_management=False)
    bl, p, q, E = expected_counts(x, d, lr, up)
    assert p.max() == 1.0  # clipping happens
    t = pulsed_tile(len(d), len(x), up, lr, seed=5)
    t.update(f32(np.tile(x, (R, 1))), f32(np.tile(d, (R, 1))))
    counts = -t.get_weights().astype(np.float64) * np.sign(np.outer(d, x)) / DW_MIN
    assert np.all(np.abs(counts - R * E) <= 5 * np.sqrt(R * E) + 1e-3)
    assert np.all(E <= lr * np.abs(np.outer(d, x)) / DW_MIN + 1e-9)


def test_bl_management_clips_the_d_side_when_ratio_exceeds_bl():
    # lr max|x| max|d| / dw_min = 100 > desired_bl = 31: at most 31 pulses, the d side clips.
    lr, R = 0.1, 300
    x, d = _xd(4)
    up = UpdateParameters()
    bl, p, q, E = expected_counts(x, d, lr, up)
    assert bl == 31 and q.max() == 1.0 and p.max() == pytest.approx(1.0)
    t = pulsed_tile(len(d), len(x), up, lr, seed=6)
    t.update(f32(np.tile(x, (R, 1))), f32(np.tile(d, (R, 1))))
    counts = -t.get_weights().astype(np.float64) * np.sign(np.outer(d, x)) / DW_MIN
    sd = np.sqrt(R * E * (1 - np.outer(q, p)))
    slack = float_slack(R * E, t.get_weights())
    assert np.all(np.abs(counts - R * E) <= 5 * sd + slack)
    # the largest pair gets exactly BL coincidences every time
    j, i = np.argmax(np.abs(d)), np.argmax(np.abs(x))
    assert abs(counts[j, i] - R * 31) <= slack[j, i]


@pytest.mark.parametrize("um", [True, False])
@pytest.mark.parametrize("ublm", [True, False])
@pytest.mark.parametrize("sto_round", [False, True])
def test_deterministic_implicit_mean_update(um, ublm, sto_round):
    # Pulse counts round(p BL), round(q BL) and coincidences round(xc dc / BL): within
    # 0.5 (p + q) + 0.25 / BL of the exact BL p q, plus 0.5 for the final rounding; with
    # stochastic rounding that last 0.5 becomes unbiased noise (std <= 0.5).
    lr, R = 0.01, 400
    x, d = _xd(5)
    up = UpdateParameters(pulse_type=PulseType.DETERMINISTIC_IMPLICIT, update_management=um,
                          update_bl_management=ublm, sto_round=sto_round)
    bl, p, q, E = expected_counts(x, d, lr, up)
    t = pulsed_tile(len(d), len(x), up, lr, seed=7)
    t.update(f32(np.tile(x, (R, 1))), f32(np.tile(d, (R, 1))))
    counts = -t.get_weights().astype(np.float64) * np.sign(np.outer(d, x)) / DW_MIN / R
    disc = 0.5 * (p[None, :] + q[:, None]) + 0.25 / bl
    slack = 5 * 0.5 / np.sqrt(R) if sto_round else 0.5
    assert np.all(np.abs(counts - E) <= disc + slack + 1e-3)
    np.testing.assert_allclose(E, lr * np.abs(np.outer(d, x)) / DW_MIN, rtol=1e-9)
    if not sto_round:
        # deterministic: every repetition gives the same integer count
        assert np.allclose(counts, np.round(counts), atol=1e-3)


def test_deterministic_implicit_exact_counts_on_grid():
    # A = 1 (lr = dw_min BL) and x, d on the 1/BL grid: p BL, q BL are integers, and with
    # stochastic rounding the mean count is exactly BL p q.
    bl, R = 8, 2000
    lr = DW_MIN * bl
    x = np.array([1.0, -0.5, 0.25, 0.125, -0.875])
    d = np.array([-1.0, 0.375, 0.625])
    up = UpdateParameters(pulse_type=PulseType.DETERMINISTIC_IMPLICIT, update_management=False,
                          update_bl_management=False, desired_bl=bl, sto_round=True)
    t = pulsed_tile(3, 5, up, lr, seed=8)
    t.update(f32(np.tile(x, (R, 1))), f32(np.tile(d, (R, 1))))
    counts = -t.get_weights().astype(np.float64) * np.sign(np.outer(d, x)) / DW_MIN / R
    E = bl * np.abs(np.outer(d, x))
    # floor(v + u): a two-point variable with std <= 0.5 per repetition
    assert np.all(np.abs(counts - E) <= 5 * 0.5 / np.sqrt(R) + 1e-3)


@pytest.mark.parametrize("fixed_bl", [True, False])
@pytest.mark.parametrize("pulse_type", [PulseType.STOCHASTIC_COMPRESSED, PulseType.STOCHASTIC])
def test_batch_of_different_samples(fixed_bl, pulse_type):
    # A batch of R different (x_n, d_n): the total change is -lr sum_n d_n x_n^T; with fixed_bl
    # the whole batch uses the largest BL, which leaves the expectation unchanged.
    lr, R, M, K = 0.01, 500, 7, 5
    g = np.random.default_rng(9)
    X = f32(g.uniform(-1, 1, size=(R, K)) * g.uniform(0.1, 1, size=(R, 1)))
    D = f32(g.uniform(-1, 1, size=(R, M)) * g.uniform(0.1, 1, size=(R, 1)))
    up = UpdateParameters(pulse_type=pulse_type, fixed_bl=fixed_bl)
    t = pulsed_tile(M, K, up, lr, seed=10)
    t.update(X, D)
    dW = t.get_weights().astype(np.float64)
    ref = -lr * D.astype(np.float64).T @ X.astype(np.float64)
    var = sum(expected_counts(X[n].astype(np.float64), D[n].astype(np.float64), lr, up)[3] for n in range(R))
    assert np.all(np.abs(dW - ref) <= 5 * DW_MIN * np.sqrt(var) + 1e-5)


def test_repeated_update_calls_draw_fresh_pulses():
    lr, R = 0.01, 300
    x, d = _xd(11)
    up = UpdateParameters()
    t = pulsed_tile(len(d), len(x), up, lr, seed=12)
    prev = t.get_weights()
    steps = []
    for _ in range(R):
        c = t.call_index
        t.update(f32(x[None]), f32(d[None]))
        assert t.call_index == c + 1
        w = t.get_weights()
        steps.append((w - prev).astype(np.float64))
        prev = w
    steps = np.array(steps)
    bl, p, q, E = expected_counts(x, d, lr, up)
    mean = steps.mean(0)
    sd = DW_MIN * np.sqrt(E / R)
    assert np.all(np.abs(mean + lr * np.outer(d, x)) <= 5 * sd + 1e-6)
    assert np.all(steps.std(0)[E > 0.5] > 0)  # not the same pulses every call


@pytest.mark.parametrize("device", ["linear", "floating_point"])
def test_pulse_type_none_and_floating_point_device_are_exact(device):
    g = np.random.default_rng(13)
    M, K, N, lr = 9, 11, 5, 0.05
    X = f32(g.normal(size=(N, K)))
    D = f32(g.normal(size=(N, M)))
    W0 = f32(g.uniform(-0.3, 0.3, size=(M, K)))
    if device == "linear":
        t = analog_tile(M, K, device=linear_device(), update=UpdateParameters(pulse_type=PulseType.NONE))
    else:
        t = analog_tile(M, K, device=FloatingPointDevice())
    t.learning_rate = lr
    t.set_weights(W0)
    t.update(X, D)
    ref = W0.astype(np.float64) - lr * D.astype(np.float64).T @ X.astype(np.float64)
    tol = lr * np.abs(D.astype(np.float64)).T @ np.abs(X.astype(np.float64)) * 4 * N * F32_EPS + 4 * F32_EPS
    assert np.all(np.abs(t.get_weights() - ref) <= tol)


def test_floating_point_device_has_no_bounds():
    t = analog_tile(2, 2, device=FloatingPointDevice())
    t.set_weights(f32([[5.0, -7.0], [100.0, 0.0]]))
    np.testing.assert_array_equal(t.get_weights(), f32([[5.0, -7.0], [100.0, 0.0]]))
    t.learning_rate = 1.0
    t.update(f32([[10.0, 0.0]]), f32([[-10.0, 0.0]]))
    assert t.get_weights()[0, 0] == pytest.approx(105.0)


def test_zero_lr_or_zero_input_changes_nothing():
    x, d = _xd(14)
    t = pulsed_tile(len(d), len(x), UpdateParameters(), 0.0)
    t.update(f32(x[None]), f32(d[None]))
    assert np.all(t.get_weights() == 0)
    t.learning_rate = 0.01
    t.update(np.zeros((3, len(x)), np.float32), f32(np.tile(d, (3, 1))))
    assert np.all(t.get_weights() == 0)


def test_floating_point_tile_forward_backward_update():
    g = np.random.default_rng(15)
    M, K, N = 13, 17, 6
    t = rpu_base.tiles.FloatingPointTile(M, K)
    assert (t.out_size, t.in_size) == (M, K)
    W = f32(g.normal(size=(M, K)))
    t.set_weights(W)
    np.testing.assert_array_equal(t.get_weights(), W)
    x = f32(g.normal(size=(N, K)))
    d = f32(g.normal(size=(N, M)))
    W64 = W.astype(np.float64)
    assert np.all(np.abs(t.forward(x) - x.astype(np.float64) @ W64.T) <= matmul_tol(x, W))
    assert np.all(np.abs(t.backward(d) - d.astype(np.float64) @ W64) <= matmul_tol(d, W.T))
    t.learning_rate = 0.1
    t.update(x, d)
    ref = W64 - 0.1 * d.astype(np.float64).T @ x.astype(np.float64)
    tol = 0.1 * np.abs(d.astype(np.float64)).T @ np.abs(x.astype(np.float64)) * 4 * N * F32_EPS + 4 * F32_EPS * np.abs(W64)
    assert np.all(np.abs(t.get_weights() - ref) <= tol)
    out = np.empty((N, M), np.float32)
    r = t.forward(x, out=out)
    assert r is out


_CHUNK_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, "tests")
from conftest import analog_tile, f32
from aihw_deploy.simulator.parameters import PulseType, UpdateParameters
from aihw_deploy.simulator.configs import LinearStepDevice, SoftBoundsDevice
out = {}
for dev_name, dev in [("soft", SoftBoundsDevice(dw_min=0.01)), ("linear", LinearStepDevice(dw_min=0.01, gamma_up=0.5))]:
    for name, up in [("wide", UpdateParameters(desired_bl=31)),
                     ("narrow", UpdateParameters(desired_bl=5)),
                     ("implicit", UpdateParameters(pulse_type=PulseType.DETERMINISTIC_IMPLICIT, sto_round=True))]:
        g = np.random.default_rng(3)
        N, M, K = 301, 5, 7
        X = f32(g.uniform(-1, 1, size=(N, K)))
        D = f32(g.uniform(-1, 1, size=(N, M)))
        t = analog_tile(M, K, device=dev, update=up, seed=21)
        t.learning_rate = 0.05
        w0 = t.get_weights()
        t.update(X, D)
        t.update(X[:40], D[:40])
        w = t.get_weights()
        assert np.abs(w - w0).max() > 0, "no update"
        out[dev_name + "/" + name] = w.tobytes().hex()
print(json.dumps(out))
"""


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_pulse_by_pulse_update_does_not_depend_on_the_sample_chunk(chunk):
    # Devices with a w-dependent step take a large batch in chunks of samples (bounded memory);
    # every row still sees the samples in order and its cycle-to-cycle stream continues, so any
    # chunk size (RPU_PU_CHUNK, in per-sample elements: 7 = one sample per chunk, 64 and 1000 =
    # partial last chunks) gives the same bits as the whole batch at once.
    import json
    import os
    import subprocess
    import sys

    def run(env_chunk):
        env = dict(os.environ)
        env.pop("RPU_PU_CHUNK", None)
        if env_chunk is not None:
            env["RPU_PU_CHUNK"] = str(env_chunk)
        res = subprocess.run([sys.executable, "-c", _CHUNK_SCRIPT], env=env, capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    whole = run(None)  # 301 x 7 elements: one chunk by default
    assert run(chunk) == whole
