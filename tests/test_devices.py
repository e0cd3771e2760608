"""Device models (SPEC §3): single-pulse responses against the formulas evaluated in numpy,
saturation at the per-device bounds, device-to-device statistics and reproducibility."""

import numpy as np
import pytest
from conftest import analog_tile, f32

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

pulse_response = rpu_base.devices.pulse_response

# --------------------------------------------------------------------------- numpy references


def ref_step(kind, dev, cell, w, direction):
    """Step size (>= 0) of one pulse without cycle-to-cycle noise, float64 (SPEC §3; ExpStep and
    PowStep per the aihwkit documentation)."""
    dw_up, dw_down, w_max, w_min, g_up, g_down = [float(v) for v in cell]
    up = direction > 0
    if kind in ("constant", "floating"):
        s = dw_up if up else dw_down
    elif kind in ("linear", "soft"):
        if kind == "soft":
            g_up = g_down = 1.0
        # the step shrinks linearly toward the bound it moves to
        s = dw_up * (1 - g_up * w / w_max) if up else dw_down * (1 - g_down * w / w_min)
    elif kind == "exp":
        z = 2 * dev.a * w / (w_max - w_min) + dev.b
        y = 1 - dev.A_up * np.exp(dev.gamma_up * z) if up else 1 - dev.A_down * np.exp(-dev.gamma_down * z)
        s = max(y, 0.0) * (dw_up if up else dw_down)
    elif kind == "pow":
        omega = min(max((w_max - w) / (w_max - w_min), 0.0), 1.0)
        s = dw_up * omega**g_up if up else dw_down * (1 - omega) ** g_down
    else:
        raise AssertionError(kind)
    return max(s, 0.0)


def ref_pulse(kind, dev, cell, w, direction, xi=0.0, dw_min_std=0.0):
    s = ref_step(kind, dev, cell, w, direction) * (1 + dw_min_std * xi)
    w_new = w + s if direction > 0 else w - s
    return min(max(w_new, float(cell[3])), float(cell[2]))


KINDS = {
    "constant": ConstantStepDevice,
    "linear": lambda **kw: LinearStepDevice(gamma_up=0.5, gamma_down=0.3, **kw),
    "soft": SoftBoundsDevice,
    "exp": ExpStepDevice,
    "pow": lambda **kw: PowStepDevice(pow_gamma=1.5, **kw),
}

# --------------------------------------------------------------------------- pulse_response


@pytest.mark.parametrize("kind", list(KINDS))
def test_pulse_response_matches_formula(kind):
    std = 0.2
    dev = KINDS[kind](dw_min_std=std)
    b = dev.as_bindings()
    cells = [
        f32([0.011, 0.009, 0.8, -0.55, 0.5, 0.3]),
        f32([0.02, 0.03, 0.4, -0.9, 1.5, 0.7]),
        f32([0.005, 0.005, 1.0, -1.0, 0.0, 2.0]),
    ]
    for cell in cells:
        if kind == "soft":
            cell = cell.copy()
            cell[4:] = 1.0  # what a tile builds for soft bounds (slope 1)
        for w in np.linspace(float(cell[3]), float(cell[2]), 23):
            w = float(np.float32(w))
            for direction in (1, -1):
                for xi in (0.0, 0.7, -1.3):
                    got = pulse_response(b, cell, w, direction, xi)
                    exp = ref_pulse(kind, b, cell, w, direction, xi, std)
                    # float32: result rounding (|w| ulp) and ~1e-6 relative error of the step
                    assert abs(got - exp) <= 3e-7 + 2e-6 * abs(exp - w), (kind, cell, w, direction, xi, got, exp)


def test_soft_bounds_step_is_linear_in_w_and_zero_at_bounds():
    b = SoftBoundsDevice(dw_min_std=0.0).as_bindings()
    cell = f32([0.01, 0.012, 0.6, -0.4, 1.0, 1.0])
    ws = np.linspace(-0.4, 0.6, 11).astype(np.float32)
    up = np.array([pulse_response(b, cell, float(w), 1) - w for w in ws], np.float64)
    down = np.array([w - pulse_response(b, cell, float(w), -1) for w in ws], np.float64)
    np.testing.assert_allclose(up, 0.01 * (1 - ws / 0.6), atol=1e-7)
    np.testing.assert_allclose(down, 0.012 * (1 - ws / -0.4), atol=1e-7)
    assert abs(up[-1]) < 1e-7 and abs(down[0]) < 1e-7
    # linear: second differences vanish
    assert np.max(np.abs(np.diff(up, 2))) < 1e-7


def test_constant_step_pulse_response_clips_at_bounds():
    b = ConstantStepDevice(dw_min_std=0.0).as_bindings()
    cell = f32([0.1, 0.1, 0.55, -0.45, 0, 0])
    assert pulse_response(b, cell, 0.5, 1) == np.float32(0.55)
    assert pulse_response(b, cell, 0.55, 1) == np.float32(0.55)
    assert pulse_response(b, cell, -0.4, -1) == np.float32(-0.45)


# --------------------------------------------------------------------------- via tile updates

DW_MIN = 0.001


def single_pulse_tile(device, M, K, seed=0):
    """A tile where one update of a one-row batch applies exactly one pulse to every device:
    implicit pulses with BL = 1 and lr = dw_min give p = q = 1 and one coincidence."""
    up = UpdateParameters(pulse_type=PulseType.DETERMINISTIC_IMPLICIT, desired_bl=1,
                          update_management=False, update_bl_management=False)
    t = analog_tile(M, K, device=device, update=up, seed=seed)
    t.learning_rate = device.dw_min
    return t


def pulse_all(t, direction, n=1):
    """n pulses on every device of the tile, in direction +1 (up) or -1 (down)."""
    x = np.ones((n, t.in_size), np.float32)
    d = np.full((n, t.out_size), -float(direction), np.float32)  # direction = -sign(x d)
    t.update(x, d)


@pytest.mark.parametrize("kind", list(KINDS))
def test_tile_pulses_follow_formula(kind):
    dev = KINDS[kind](dw_min=DW_MIN * 10, dw_min_std=0.0, construction_seed=3)
    b = dev.as_bindings()
    M, K = 6, 7
    t = single_pulse_tile(dev, M, K)
    cells = t.get_device_arrays().astype(np.float64)
    g = np.random.default_rng(1)
    w0 = g.uniform(cells[..., 3], cells[..., 2])
    t.set_weights(f32(w0))
    w = t.get_weights().astype(np.float64)
    for direction in [1] * 15 + [-1] * 30:
        pulse_all(t, direction)
        new = t.get_weights().astype(np.float64)
        exp = np.array([[ref_pulse(kind, b, cells[j, i], w[j, i], direction) for i in range(K)] for j in range(M)])
        assert np.all(np.abs(new - exp) <= 3e-7 + 2e-6 * np.abs(exp - w)), (kind, direction)
        w = new


def test_soft_bounds_mean_step_via_tile_with_cycle_to_cycle_noise():
    # Relative step (w' - w) / (dw_up (1 - w / w_max)) = 1 + dw_min_std xi: mean 1 (std of the
    # mean std/sqrt(n)), sample std = dw_min_std (std of the sample std ~ std/sqrt(2n)).
    std, M, K, steps = 0.3, 20, 25, 12
    dev = SoftBoundsDevice(dw_min=0.01, dw_min_std=std)
    t = single_pulse_tile(dev, M, K, seed=4)
    cells = t.get_device_arrays().astype(np.float64)
    t.set_weights(np.zeros((M, K), np.float32))
    rel_up, rel_down = [], []
    w = t.get_weights().astype(np.float64)
    for direction in [1] * steps + [-1] * steps:
        pulse_all(t, direction)
        new = t.get_weights().astype(np.float64)
        if direction > 0:
            rel_up.append((new - w) / (cells[..., 0] * (1 - w / cells[..., 2])))
        else:
            rel_down.append((w - new) / (cells[..., 1] * (1 - w / cells[..., 3])))
        w = new
    for rel in (np.ravel(rel_up), np.ravel(rel_down)):
        n = rel.size
        assert abs(rel.mean() - 1) < 5 * std / np.sqrt(n)
        assert abs(rel.std() - std) < 5 * std / np.sqrt(2 * n)


def test_soft_bounds_batch_update_approaches_bound():
    # Many up pulses: w_k = w_max (1 - (1 - dw_up/w_max)^k) for a soft-bounds device.
    dev = SoftBoundsDevice(dw_min=0.01, dw_min_std=0.0, construction_seed=5)
    t = single_pulse_tile(dev, 4, 5)
    cells = t.get_device_arrays().astype(np.float64)
    t.set_weights(np.zeros((4, 5), np.float32))
    k = 200
    pulse_all(t, 1, n=k)  # a batch of k samples = k pulses
    exp = cells[..., 2] * (1 - (1 - cells[..., 0] / cells[..., 2]) ** k)
    np.testing.assert_allclose(t.get_weights(), exp, rtol=1e-4, atol=1e-6)


def test_constant_step_saturates_at_per_device_bounds():
    t = analog_tile(6, 5, device=ConstantStepDevice(construction_seed=7), seed=2)  # dtod + c2c on
    arr = t.get_device_arrays()
    w_max, w_min = arr[..., 2], arr[..., 3]
    assert np.std(w_max) > 0.01 and np.std(w_min) > 0.01  # bounds vary per device
    t.learning_rate = 1.0
    x = np.ones((500, 5), np.float32)
    t.update(x, -np.ones((500, 6), np.float32))  # up: 31 pulses per sample, ~15000 in all
    np.testing.assert_array_equal(t.get_weights(), w_max)
    t.update(x, np.ones((500, 6), np.float32))  # down
    np.testing.assert_array_equal(t.get_weights(), w_min)


def test_set_weights_clips_to_device_bounds():
    t = analog_tile(4, 3, device=ConstantStepDevice(construction_seed=8))
    arr = t.get_device_arrays()
    t.set_weights(np.full((4, 3), 5.0, np.float32))
    np.testing.assert_array_equal(t.get_weights(), arr[..., 2])
    t.set_weights(np.full((4, 3), -5.0, np.float32))
    np.testing.assert_array_equal(t.get_weights(), arr[..., 3])
    t.set_raw_weights(np.full((4, 3), 5.0, np.float32))  # restoring a state: no clipping
    assert np.all(t.get_weights() == 5.0)


# --------------------------------------------------------------------------- device-to-device


def test_device_arrays_reproducible_from_construction_seed():
    dev = LinearStepDevice(gamma_up=0.2, gamma_down=0.1, construction_seed=11)
    a = analog_tile(30, 20, device=dev, seed=1).get_device_arrays()
    b = analog_tile(30, 20, device=dev, seed=999).get_device_arrays()  # tile seed: irrelevant
    np.testing.assert_array_equal(a, b)
    c = analog_tile(30, 20, device=LinearStepDevice(gamma_up=0.2, gamma_down=0.1, construction_seed=12)).get_device_arrays()
    assert np.all(a[..., :4] != c[..., :4])
    assert a.shape == (30, 20, 6) and a.dtype == np.float32


def test_device_to_device_statistics():
    M, K = 200, 100
    n = M * K
    dev = LinearStepDevice(dw_min=0.002, dw_min_dtod=0.2, w_max=0.8, w_max_dtod=0.1, w_min=-0.5,
                           w_min_dtod=0.15, up_down=0.05, up_down_dtod=0.02, gamma_up=0.5,
                           gamma_up_dtod=0.05, gamma_down=0.4, gamma_down_dtod=0.08, construction_seed=21)
    a = analog_tile(M, K, device=dev).get_device_arrays().astype(np.float64).reshape(n, 6)
    dw_up, dw_down, w_max, w_min, g_up, g_down = a.T
    dw = (dw_up + dw_down) / 2  # = dw_min (1 + dtod xi)
    ud = (dw_up - dw_down) / (dw_up + dw_down)  # = up_down + up_down_dtod xi

    def check(v, mean, std):
        # mean: std/sqrt(n); sample std: std/sqrt(2n); 5 sigma each
        assert abs(v.mean() - mean) < 5 * std / np.sqrt(n), (v.mean(), mean)
        assert abs(v.std() - std) < 5 * std / np.sqrt(2 * n), (v.std(), std)

    check(dw, 0.002, 0.002 * 0.2)
    check(w_max, 0.8, 0.8 * 0.1)
    check(w_min, -0.5, 0.5 * 0.15)
    check(ud, 0.05, 0.02)
    check(g_up, 0.5, 0.05)
    check(g_down, 0.4, 0.08)
    # independent draws: correlations ~ N(0, 1/n)
    for u, v in [(dw, w_max), (w_max, w_min), (dw, ud), (g_up, g_down), (dw, g_up)]:
        assert abs(np.corrcoef(u, v)[0, 1]) < 5 / np.sqrt(n)


def test_pow_step_gamma_device_to_device():
    M, K = 100, 100
    n = M * K
    dev = PowStepDevice(pow_gamma=2.0, pow_gamma_dtod=0.1, pow_up_down=0.2, pow_up_down_dtod=0.05,
                        construction_seed=2)
    a = analog_tile(M, K, device=dev).get_device_arrays().astype(np.float64).reshape(n, 6)
    g_up, g_down = a[:, 4], a[:, 5]
    # gamma_up/down = pow_gamma (1 +- beta + pow_gamma_dtod xi), beta = pow_up_down + dtod xi'
    s = (g_up + g_down) / (2 * 2.0)  # = 1 + pow_gamma_dtod xi
    beta = (g_up - g_down) / (2 * 2.0)
    assert abs(s.mean() - 1.0) < 5 * 0.1 / np.sqrt(n)
    assert abs(s.std() - 0.1) < 5 * 0.1 / np.sqrt(2 * n)
    assert abs(beta.mean() - 0.2) < 5 * 0.05 / np.sqrt(n)
    assert abs(beta.std() - 0.05) < 5 * 0.05 / np.sqrt(2 * n)


def test_no_dtod_gives_identical_devices():
    dev = ConstantStepDevice(dw_min=0.003, dw_min_dtod=0.0, w_max_dtod=0.0, w_min_dtod=0.0, up_down=0.1,
                             up_down_dtod=0.0, w_max=0.7, w_min=-0.4)
    a = analog_tile(5, 4, device=dev).get_device_arrays()
    np.testing.assert_allclose(a[..., 0], 0.003 * 1.1, rtol=1e-6)
    np.testing.assert_allclose(a[..., 1], 0.003 * 0.9, rtol=1e-6)
    np.testing.assert_allclose(a[..., 2], 0.7, rtol=1e-7)
    np.testing.assert_allclose(a[..., 3], -0.4, rtol=1e-7)


def test_floating_point_device_arrays_are_unbounded():
    a = analog_tile(3, 2, device=FloatingPointDevice()).get_device_arrays()
    assert np.all(np.isposinf(a[..., 2])) and np.all(np.isneginf(a[..., 3]))


def test_exp_step_defaults_from_cpp():
    d = rpu_base.parameters.DeviceParameters.defaults(rpu_base.parameters.DeviceType.EXP_STEP)
    assert d.gamma_up == pytest.approx(12.44625) and d.gamma_down == pytest.approx(12.78785)
    assert d.a == pytest.approx(0.244) and d.b == pytest.approx(0.2425)
