"""Bad input gives a clear TypeError/ValueError naming the argument or field, never a crash or
silently wrong numbers."""

import numpy as np
import pytest
import torch
from conftest import analog_tile, io_params, mapping

from aihw_deploy.simulator import rpu_base, set_num_threads
from aihw_deploy.simulator.parameters import (
    ConstantStepDevice,
    IOParameters,
    LinearStepDevice,
    MappingParameter,
    UpdateParameters,
)

T = rpu_base.tiles
W = np.full((3, 4), 0.25, np.float32)


def mvm(weights, x, **kw):
    kw.setdefault("io", io_params())
    kw.setdefault("mapping", mapping())
    return T.io_mvm(weights, x, **kw)


# --------------------------------------------------------------------------- arrays


@pytest.mark.parametrize(
    "x,exc,match",
    [
        (np.zeros((2, 5), np.float32), ValueError, r"x: expected shape \(N, 4\), got \(2, 5\)"),
        (np.zeros(4, np.float32), ValueError, r"x: expected shape"),
        (np.zeros((2, 4, 1), np.float32), ValueError, r"x: expected shape"),
        (np.zeros((2, 4)), TypeError, r"x: expected dtype float32, got float64"),
        (np.zeros((2, 4), np.int32), TypeError, r"x: expected dtype float32"),
        (np.zeros((2, 4), np.float16), TypeError, r"x: expected dtype float32"),
        ([[0.0] * 4], TypeError, r"x: expected a float32 torch.Tensor or numpy.ndarray, got list"),
        (None, TypeError, r"x: .*got None"),
        (torch.zeros(2, 4, dtype=torch.float64), TypeError, r"x: expected dtype torch.float32"),
        (torch.zeros(4, 2).t(), ValueError, r"x: tensor must be contiguous"),
        (np.zeros((4, 2), np.float32).T, ValueError, r"x: array must be C-contiguous"),
    ],
)
def test_io_mvm_rejects_bad_x(x, exc, match):
    with pytest.raises(exc, match=match):
        mvm(W, x)


def test_io_mvm_rejects_bad_weights_out_alpha():
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"weights: expected a 2-D matrix, got shape \(2, 3, 4\)"):
        mvm(np.zeros((2, 3, 4), np.float32), x)
    with pytest.raises(TypeError, match="weights: expected dtype float32"):
        mvm(W.astype(np.float64), x)
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 3\), got \(2, 4\)"):
        mvm(W, x, out=np.zeros((2, 4), np.float32))
    ro = np.zeros((2, 3), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out: array is read-only"):
        mvm(W, x, out=ro)
    with pytest.raises(ValueError, match="alpha: expected 1 or 3 values"):
        mvm(W, x, alpha=np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 3\)"):
        mvm(W, x, transposed=True)


def test_io_mvm_rejects_invalid_parameter_structs():
    bad = rpu_base.parameters.IOParameters()
    bad.out_noise = -1.0
    with pytest.raises(ValueError, match="io: out_noise must be >= 0"):
        mvm(W, np.zeros((1, 4), np.float32), io=bad)
    bad_map = rpu_base.parameters.MappingParameter()
    bad_map.max_input_size = 0
    with pytest.raises(ValueError, match="mapping: max_input_size"):
        mvm(W, np.zeros((1, 4), np.float32), mapping=bad_map)


def test_empty_batches_are_fine():
    assert mvm(W, np.zeros((0, 4), np.float32)).shape == (0, 3)
    t = analog_tile(3, 4)
    assert t.forward(np.zeros((0, 4), np.float32)).shape == (0, 3)
    assert t.backward(np.zeros((0, 3), np.float32)).shape == (0, 4)
    t.update(np.zeros((0, 4), np.float32), np.zeros((0, 3), np.float32))


def test_non_finite_inputs_propagate_as_nan():
    # NaN must not turn into a plausible finite value (it used to become -inp_bound or a
    # zero output); a finite row in the same batch is unaffected.
    x = np.array([[np.nan, 0.5, 0.2, 0.1], [np.nan] * 4, [np.inf, 1, 1, 1], [1, 1, 1, 1]], np.float32)
    io = io_params(out_noise=0.0)  # (the noise of a row depends on its index)
    y = mvm(W, x, io=io)
    assert np.all(np.isnan(y[:3]))
    np.testing.assert_array_equal(y[3], mvm(W, x[3:], io=io)[0])
    assert np.all(np.isnan(mvm(W, x)[:3]))
    Wn = W.copy()
    Wn[0, 0] = np.nan  # e.g. a modified weight copy passed to forward(weights=...)
    y = mvm(Wn, x[3:])
    assert np.isnan(y[0, 0]) and np.all(np.isfinite(y[0, 1:]))
    y = mvm(Wn, x[3:], io=io_params(is_perfect=True))
    assert np.isnan(y[0, 0])


# --------------------------------------------------------------------------- tiles


def test_tile_rejects_bad_arrays():
    t = analog_tile(3, 4)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 4\), got \(2, 3\)"):
        t.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"d: expected shape \(N, 3\), got \(2, 4\)"):
        t.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"d: expected shape \(2, 3\), got \(3, 3\)"):
        t.update(np.zeros((2, 4), np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match="d: expected dtype float32"):
        t.update(np.zeros((2, 4), np.float32), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"weights: expected shape \(3, 4\), got \(4, 3\)"):
        t.set_weights(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"weights: expected shape \(3, 4\)"):
        t.forward(np.zeros((1, 4), np.float32), weights=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"alpha: expected 1 or out_size values, got 2"):
        t.forward(np.zeros((1, 4), np.float32), alpha=np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"device_arrays: expected shape \(3, 4, 6\), got \(3, 4, 5\)"):
        t.set_device_arrays(np.zeros((3, 4, 5), np.float32))
    with pytest.raises(TypeError, match="x: expected dtype torch.float32"):
        t.forward(torch.zeros(1, 4, dtype=torch.float16))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_tile_rejects_non_finite_weights(bad):
    t = analog_tile(3, 4)
    w = np.zeros((3, 4), np.float32)
    w[1, 2] = bad
    with pytest.raises(ValueError, match="weights: contain NaN or Inf"):
        t.set_weights(w)
    with pytest.raises(ValueError, match="weights: contain NaN or Inf"):
        t.set_raw_weights(w)
    fp = T.FloatingPointTile(3, 4)
    with pytest.raises(ValueError, match="weights: contain NaN or Inf"):
        fp.set_weights(w)
    assert np.all(t.get_weights() == 0)  # unchanged


@pytest.mark.parametrize("which", ["x", "d"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_pulsed_update_rejects_non_finite_inputs(which, bad):
    t = analog_tile(3, 4, seed=1)
    t.set_weights(np.full((3, 4), 0.1, np.float32))
    x = np.ones((2, 4), np.float32)
    d = np.ones((2, 3), np.float32)
    (x if which == "x" else d)[1, 0] = bad
    with pytest.raises(ValueError, match=f"{which}: contains NaN or Inf"):
        t.update(x, d)
    np.testing.assert_array_equal(t.get_weights(), np.full((3, 4), 0.1, np.float32))


@pytest.mark.parametrize("out_size,in_size,name", [(0, 4, "out_size"), (-3, 4, "out_size"), (3, 0, "in_size"),
                                                   (3, -1, "in_size")])
def test_zero_or_negative_sizes(out_size, in_size, name):
    with pytest.raises(ValueError, match=f"{name} must be positive"):
        analog_tile(out_size, in_size)
    with pytest.raises(ValueError, match=f"{name} must be positive"):
        T.FloatingPointTile(out_size, in_size)


def test_negative_seed_is_a_type_error():
    with pytest.raises(TypeError):
        analog_tile(3, 4, seed=-1)
    with pytest.raises(TypeError):
        analog_tile(3, 4).set_generator(-1, 0)


def test_tile_constructor_validates_structs():
    dev = rpu_base.parameters.DeviceParameters()
    dev.dw_min = 0.0
    with pytest.raises(ValueError, match="device: dw_min must be > 0"):
        analog_tile(3, 4, device=dev)
    io = rpu_base.parameters.IOParameters()
    io.inp_bound = -1.0
    with pytest.raises(ValueError, match="backward: inp_bound"):
        analog_tile(3, 4, backward=io)
    t = analog_tile(3, 4)
    with pytest.raises(ValueError, match="forward: inp_bound"):
        t.forward_io = io
    up = rpu_base.parameters.UpdateParameters()
    up.desired_bl = 0
    with pytest.raises(ValueError, match="update: desired_bl"):
        t.update_parameters = up


# --------------------------------------------------------------------------- parameter dataclasses


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: IOParameters(noise_management="bogus"), ValueError, r"IOParameters.noise_management: unknown option 'bogus'"),
        (lambda: IOParameters(bound_management="sometimes"), ValueError, r"IOParameters.bound_management"),
        (lambda: IOParameters(w_noise_type=3), TypeError, r"IOParameters.w_noise_type"),
        (lambda: UpdateParameters(pulse_type="bogus"), ValueError, r"UpdateParameters.pulse_type: unknown option"),
        (lambda: IOParameters(out_noise="a lot"), TypeError, r"IOParameters.out_noise: expected a number"),
        (lambda: IOParameters(is_perfect=1), TypeError, r"IOParameters.is_perfect: expected a bool"),
        (lambda: UpdateParameters(desired_bl=3.5), TypeError, r"UpdateParameters.desired_bl: expected an int"),
        (lambda: MappingParameter(max_input_size=True), TypeError, r"MappingParameter.max_input_size"),
        (lambda: IOParameters(no_such_field=1), TypeError, r"no_such_field"),
        (lambda: ConstantStepDevice(dw_min=-0.1).as_bindings(), ValueError, r"dw_min must be > 0"),
        (lambda: ConstantStepDevice(dw_min=0.0).as_bindings(), ValueError, r"dw_min must be > 0"),
        (lambda: ConstantStepDevice(w_min=0.5, w_max=0.1).as_bindings(), ValueError, r"w_min must be <= w_max"),
        (lambda: ConstantStepDevice(w_min=0.2, w_max=0.2).as_bindings(), ValueError, r"w_min must differ"),
        (lambda: ConstantStepDevice(dw_min_std=-1.0).as_bindings(), ValueError, r"dw_min_std"),
        (lambda: LinearStepDevice(gamma_up=float("nan")).as_bindings(), ValueError, r"finite"),
        (lambda: ConstantStepDevice(construction_seed=-1).as_bindings(), ValueError, r"construction_seed"),
        (lambda: UpdateParameters(desired_bl=0).as_bindings(), ValueError, r"desired_bl must be in \[1, 64\]"),
        (lambda: UpdateParameters(desired_bl=65).as_bindings(), ValueError, r"desired_bl"),
        (lambda: IOParameters(inp_noise=-0.1).as_bindings(), ValueError, r"inp_noise must be >= 0"),
        (lambda: IOParameters(out_noise=float("nan")).as_bindings(), ValueError, r"out_noise"),
        (lambda: IOParameters(inp_bound=0.0).as_bindings(), ValueError, r"inp_bound"),
        (lambda: IOParameters(out_bound=-1.0).as_bindings(), ValueError, r"out_bound"),
        (lambda: IOParameters(max_bm_factor=0.5).as_bindings(), ValueError, r"max_bm_factor"),
        (lambda: IOParameters(nm_thres=-1.0).as_bindings(), ValueError, r"nm_thres"),
        (lambda: IOParameters(inp_res=float("inf")).as_bindings(), ValueError, r"inp_res"),
        (lambda: MappingParameter(max_input_size=0).as_bindings(), ValueError, r"max_input_size"),
        (lambda: MappingParameter(max_output_size=-5).as_bindings(), ValueError, r"max_output_size"),
    ],
)
def test_bad_parameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_values_assigned_after_construction_are_caught_at_conversion():
    io = IOParameters()
    io.noise_management = "bogus"
    with pytest.raises(ValueError, match="IOParameters.noise_management"):
        io.as_bindings()
    up = UpdateParameters()
    up.desired_bl = "31"
    with pytest.raises(TypeError, match="UpdateParameters.desired_bl"):
        up.as_bindings()


def test_pulse_response_rejects_bad_arguments():
    b = ConstantStepDevice().as_bindings()
    with pytest.raises(ValueError, match="direction must be"):
        rpu_base.devices.pulse_response(b, np.zeros(6, np.float32), 0.0, 0)
    with pytest.raises(ValueError, match="cell: expected 6 values"):
        rpu_base.devices.pulse_response(b, np.zeros(5, np.float32), 0.0, 1)


def test_bad_thread_count():
    with pytest.raises(ValueError, match="set_num_threads"):
        set_num_threads(0)
    with pytest.raises(ValueError, match="set_num_threads"):
        set_num_threads(2.0)


def test_rng_binding_rejects_bad_arguments():
    with pytest.raises(ValueError, match="base must be a multiple of 4"):
        rpu_base.rng.normals(4, 0, 2, 0, 0, 3)
    with pytest.raises(ValueError, match="n must be >= 0"):
        rpu_base.rng.normals(-1, 0, 2, 0, 0)
    with pytest.raises(TypeError):
        rpu_base.rng.philox4x32_10([0, 0, 0], [0, 0])
