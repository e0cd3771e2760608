"""Tile state and determinism: a tile restored from its state (weights, device arrays, generator
position) continues bit-identically; same seed gives same results; results do not depend on the
number of threads."""

import numpy as np
import pytest
from conftest import analog_tile, f32, mapping

from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.parameters import (
    BoundManagementType,
    ConstantStepDevice,
    IOParameters,
    MappingParameter,
    PulseType,
    SoftBoundsDevice,
    UpdateParameters,
    WeightNoiseType,
)

NOISY_FWD = IOParameters(inp_noise=0.01, out_noise=0.05, w_noise=0.01, w_noise_type=WeightNoiseType.PCM_READ,
                         inp_sto_round=True, out_sto_round=True)
NOISY_BWD = IOParameters(out_noise=0.07, inp_noise=0.02)


def _tile(seed=1, construction_seed=0, device_cls=ConstantStepDevice, **kw):
    return analog_tile(20, 15, device=device_cls(construction_seed=construction_seed), forward=NOISY_FWD,
                       backward=NOISY_BWD, seed=seed, **kw)


def _data(seed=0, N=8):
    g = np.random.default_rng(seed)
    return (f32(g.uniform(-1, 1, size=(N, 15))), f32(g.uniform(-1, 1, size=(N, 20))),
            f32(g.uniform(-0.3, 0.3, size=(20, 15))))


@pytest.mark.parametrize("device_cls", [ConstantStepDevice, SoftBoundsDevice])
def test_restored_tile_continues_bit_identically(device_cls):
    x, d, W = _data()
    a = _tile(seed=7, construction_seed=3, device_cls=device_cls)
    a.learning_rate = 0.05
    a.set_weights(W)
    for _ in range(3):
        a.forward(x)
        a.backward(d)
        a.update(x, d)
    # a fresh tile with other devices and another generator, restored from a's state
    b = _tile(seed=12345, construction_seed=99, device_cls=device_cls)
    assert not np.array_equal(a.get_device_arrays(), b.get_device_arrays())
    b.set_raw_weights(a.get_weights())
    b.set_device_arrays(a.get_device_arrays())
    b.set_generator(a.seed, a.call_index)
    b.learning_rate = a.learning_rate
    assert (b.seed, b.call_index) == (a.seed, a.call_index) == (7, 9)
    np.testing.assert_array_equal(b.get_device_arrays(), a.get_device_arrays())
    for _ in range(2):
        np.testing.assert_array_equal(b.forward(x), a.forward(x))
        np.testing.assert_array_equal(b.backward(d), a.backward(d))
        a.update(x, d)
        b.update(x, d)
        np.testing.assert_array_equal(b.get_weights(), a.get_weights())
    assert b.call_index == a.call_index


def test_same_seed_same_results_other_seed_differs():
    x, d, W = _data(1)

    def run(seed):
        t = _tile(seed=seed)
        t.learning_rate = 0.05
        t.set_weights(W)
        y = t.forward(x)
        z = t.backward(d)
        t.update(x, d)
        return y, z, t.get_weights()

    r1, r2, r3 = run(5), run(5), run(6)
    for a, b in zip(r1, r2):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(r1, r3):
        assert not np.array_equal(a, b)


def test_call_index_selects_the_noise():
    x, _, W = _data(2)
    t = _tile(seed=3)
    t.set_raw_weights(W)
    y0 = t.forward(x)
    y1 = t.forward(x)
    assert not np.array_equal(y0, y1)
    t.set_generator(3, 0)
    np.testing.assert_array_equal(t.forward(x), y0)
    np.testing.assert_array_equal(t.forward(x), y1)


def _run_everything(seed=0):
    """Forward (all noise sources, bound management, split tiles), backward, updates of every
    pulse type, device construction: large enough that every parallel loop is split."""
    g = np.random.default_rng(seed)
    M, K, N = 300, 260, 64
    W = f32(g.uniform(-0.4, 0.4, size=(M, K)))
    x = f32(g.uniform(-1, 1, size=(N, K)))
    x[:4] *= 20  # some rows saturate: bound management iterates
    d = f32(g.uniform(-1, 1, size=(N, M)))
    out = []
    fwd = IOParameters(inp_noise=0.01, out_noise=0.05, w_noise=0.01, w_noise_type=WeightNoiseType.ADDITIVE_CONSTANT,
                       inp_sto_round=True, out_sto_round=True, out_bound=3.0,
                       bound_management=BoundManagementType.ITERATIVE)
    for pulse_type, sto in [(PulseType.STOCHASTIC_COMPRESSED, False), (PulseType.DETERMINISTIC_IMPLICIT, True)]:
        t = analog_tile(M, K, device=ConstantStepDevice(construction_seed=4), forward=fwd, backward=NOISY_BWD,
                        update=UpdateParameters(pulse_type=pulse_type, sto_round=sto),
                        mapping_par=MappingParameter(max_input_size=128, max_output_size=100), seed=11)
        t.learning_rate = 0.02
        t.set_weights(W)
        out += [t.get_device_arrays(), t.forward(x), t.backward(d)]
        t.update(x, d)
        out.append(t.get_weights())
    out.append(rpu_base.tiles.io_mvm(W, x, io=fwd.as_bindings(), mapping=mapping(100, 128), seed=2, call=3))
    out.append(rpu_base.rng.normals(100003, 1, 2, 0, 0))
    return out


def test_results_independent_of_thread_count(restore_threads):
    results = {}
    for n in (1, 2, 3):
        rpu_base.set_num_threads(n)
        assert rpu_base.get_num_threads() == n
        results[n] = _run_everything()
    for n in (2, 3):
        for i, (a, b) in enumerate(zip(results[1], results[n])):
            np.testing.assert_array_equal(a, b, err_msg=f"result {i} differs with {n} threads")


def test_tile_properties_roundtrip():
    t = _tile(seed=21)
    assert (t.out_size, t.in_size) == (20, 15)
    assert t.seed == 21 and t.call_index == 0
    assert t.forward_io.out_noise == pytest.approx(0.05)
    assert t.backward_io.out_noise == pytest.approx(0.07)
    assert t.update_parameters.desired_bl == 31
    assert t.mapping.max_input_size == 512
    assert t.device.type == rpu_base.parameters.DeviceType.CONSTANT_STEP
    t.learning_rate = 0.125
    assert t.learning_rate == 0.125
    new = IOParameters(out_noise=0.0).as_bindings()
    t.forward_io = new
    assert t.forward_io.out_noise == 0.0
