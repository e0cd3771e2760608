"""torch.library ops ``aihw::analog_mvm`` / ``aihw::analog_conv``: equal to rpucuda's io_mvm and to
the layers' autograd path, one graph node per analog layer under torch.export / TorchScript,
call counters advanced outside the graph, saved programs reload after ``import aihw_deploy``."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import aihw_deploy  # noqa: F401  (registers torch.ops.aihw)
from aihw_deploy.export import to_torch_export, to_torchscript
from aihw_deploy.nn import AnalogConv1d, AnalogConv2d, AnalogConv3d, AnalogLinear, AnalogSequential
from aihw_deploy.ops import decode_io, encode_io
from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.configs import (FloatingPointRPUConfig, InferenceRPUConfig, IOParameters,
                                           MappingParameter, SingleRPUConfig, WeightNoiseType,
                                           WeightRemapParameter, WeightRemapType)

IO = IOParameters(w_noise=0.02, w_noise_type=WeightNoiseType.PCM_READ, inp_noise=0.01)


def _aihw_nodes(graph):
    return [n for n in graph.nodes if n.op == "call_function" and str(n.target).startswith("aihw.")]


def test_io_encoding_round_trip():
    io = IOParameters(inp_res=1 / 254, out_bound=10.0, w_noise_type=WeightNoiseType.ADDITIVE_CONSTANT,
                      inp_sto_round=True)
    assert decode_io(encode_io(io)) == io
    with pytest.raises(ValueError, match="expected 17 values"):
        decode_io([0.0] * 3)
    bad = encode_io(io)
    bad[11] = 7.0  # w_noise_type code out of range
    with pytest.raises(ValueError, match="w_noise_type"):
        decode_io(bad)


def test_analog_mvm_equals_io_mvm():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, generator=g)  # leading dims are flattened
    w = torch.rand(24, 40, generator=g) - 0.5
    b = torch.rand(24, generator=g)
    alpha = torch.rand(24, generator=g) + 0.5
    io = encode_io(IO)
    mapping = [16, 10]
    y = torch.ops.aihw.analog_mvm(x, w, b, alpha, io, mapping, 123, 7)
    ref = torch.empty(6, 24)
    rpu_base.tiles.io_mvm(w, x.reshape(6, 40), ref, io=IO.as_bindings(),
                          mapping=MappingParameter(max_input_size=16, max_output_size=10).as_bindings(),
                          alpha=alpha, seed=123, call=7)
    assert y.shape == (2, 3, 24)
    assert torch.equal(y, (ref + b).reshape(2, 3, 24))
    # Same (seed, call): same noise; another call: other noise.
    assert torch.equal(y, torch.ops.aihw.analog_mvm(x, w, b, alpha, io, mapping, 123, 7))
    assert not torch.equal(y, torch.ops.aihw.analog_mvm(x, w, b, alpha, io, mapping, 123, 8))


def test_ops_reject_bad_arguments():
    io = encode_io(IOParameters())
    x, w = torch.rand(3, 8), torch.rand(4, 8)
    with pytest.raises(ValueError, match=r"x must be \[\*, 8\]"):
        torch.ops.aihw.analog_mvm(torch.rand(3, 7), w, None, None, io, [512, 512], 0, 0)
    with pytest.raises(TypeError, match="float32"):
        torch.ops.aihw.analog_mvm(x.double(), w, None, None, io, [512, 512], 0, 0)
    with pytest.raises(ValueError, match="bias must be"):
        torch.ops.aihw.analog_mvm(x, w, torch.rand(5), None, io, [512, 512], 0, 0)
    with pytest.raises(ValueError, match="io must have"):
        torch.ops.aihw.analog_mvm(x, w, None, None, io[:-1], [512, 512], 0, 0)
    with pytest.raises(ValueError, match="columns"):
        torch.ops.aihw.analog_conv(torch.rand(1, 2, 5, 5), torch.rand(4, 17), None, None, io, [512, 512],
                                   [3, 3], [1, 1], [0, 0], [1, 1], 1, False, [0], [0])


def test_opcheck():
    io = encode_io(IOParameters(out_noise=0.0))
    torch.library.opcheck(torch.ops.aihw.analog_mvm.default,
                          (torch.rand(5, 8), torch.rand(3, 8), torch.rand(3), None, io, [512, 512], 1, 0))
    torch.library.opcheck(torch.ops.aihw.analog_conv.default,
                          (torch.rand(2, 4, 6, 6), torch.rand(6, 2 * 9), None, None, io, [512, 512], [3, 3], [2, 1],
                           [1, 1], [1, 2], 2, False, [1, 2], [0, 0]))


def _models():
    torch.manual_seed(3)
    remap = InferenceRPUConfig(forward=IO, remap=WeightRemapParameter(type=WeightRemapType.CHANNELWISE_SYMMETRIC))
    abias = InferenceRPUConfig(forward=IO, mapping=MappingParameter(digital_bias=False, max_input_size=9))
    return {
        "linear": (AnalogSequential(AnalogLinear(20, 12, rpu_config=InferenceRPUConfig(forward=IO))), (4, 20)),
        "linear_remap_analog_bias": (AnalogSequential(AnalogLinear(20, 12, rpu_config=remap), nn.ReLU(),
                                                      AnalogLinear(12, 5, rpu_config=abias)), (4, 20)),
        "conv1d": (AnalogSequential(AnalogConv1d(3, 6, 3, stride=2, padding=1,
                                                 rpu_config=InferenceRPUConfig(forward=IO))), (2, 3, 11)),
        "conv2d_groups_remap": (AnalogSequential(AnalogConv2d(4, 6, 3, padding=1, dilation=2, groups=2,
                                                              rpu_config=remap)), (2, 4, 7, 7)),
        "conv2d_analog_bias": (AnalogSequential(AnalogConv2d(2, 3, 2, rpu_config=abias)), (2, 2, 5, 5)),
        "conv3d": (AnalogSequential(AnalogConv3d(2, 3, 2, rpu_config=InferenceRPUConfig(forward=IO))), (1, 2, 4, 4, 4)),
    }


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("programmed", [False, True])
def test_eval_op_route_equals_autograd_route(name, programmed):
    model, shape = _models()[name]
    for t in model.analog_tiles():  # a non-trivial digital scale of remapping
        t.out_scaling = torch.rand(t.out_size) + 0.5
    model.eval()
    if programmed:
        model.program_analog_weights(seed=5)
        model.drift_analog_weights(3600.0)
    twin = copy.deepcopy(model)
    x = torch.rand(*shape)
    for _ in range(2):  # the call counters advance alike
        y_old = model(x)  # grad enabled: the autograd function
        with torch.no_grad():
            y_op = twin(x)  # no grad: torch.ops.aihw
        assert y_old.grad_fn is not None and y_op.grad_fn is None
        assert torch.equal(y_old.detach(), y_op)
    assert [t.call for t in model.analog_tiles()] == [t.call for t in twin.analog_tiles()] == \
        [2] * len(list(model.analog_tiles()))


def test_training_keeps_the_autograd_function():
    model = AnalogLinear(6, 3, rpu_config=InferenceRPUConfig())
    model.train()
    y = model(torch.rand(2, 6))
    names, todo = set(), [y.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None:
            names.add(type(fn).__name__)
            todo += [f for f, _ in fn.next_functions]
    assert "AnalogFunctionBackward" in names


def _mixed_model():
    torch.manual_seed(0)
    return AnalogSequential(
        AnalogConv2d(1, 4, 3, padding=1, rpu_config=InferenceRPUConfig()), nn.Tanh(), nn.Flatten(),
        AnalogLinear(64, 16, rpu_config=InferenceRPUConfig()), nn.ReLU(),
        AnalogLinear(16, 8, rpu_config=SingleRPUConfig()),
        AnalogLinear(8, 4, rpu_config=FloatingPointRPUConfig()))


def test_torch_export_one_node_per_analog_layer_and_no_counter_advance():
    model = _mixed_model()
    model.eval()
    model.program_analog_weights(seed=1)
    calls = [t.call for t in model.analog_tiles()]
    native = model[5]._tiles[0]._native.call_index
    ep = torch.export.export(model, (torch.rand(3, 1, 4, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    targets = [str(n.target) for n in _aihw_nodes(ep.graph)]
    assert targets == ["aihw.analog_conv.default", "aihw.analog_mvm.default", "aihw.analog_mvm.default"]
    ops = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert "aten.linear.default" in ops  # the floating-point layer is an ordinary linear
    assert [t.call for t in model.analog_tiles()] == calls
    assert model[5]._tiles[0]._native.call_index == native
    # The exported program is the eval forward at the tiles' current generator position.
    x = torch.rand(5, 1, 4, 4)
    with torch.no_grad():
        y = model(x)
    y_ep = ep.module()(x)
    assert torch.allclose(y_ep, y, rtol=0, atol=1e-6 * float(y.abs().max()))


def test_saved_programs_reload_in_a_fresh_process(tmp_path):
    model = _mixed_model()
    model.eval()
    model.program_analog_weights(seed=2)
    model.drift_analog_weights(86400.0)
    x = torch.rand(6, 1, 4, 4)
    to_torch_export(model, x[:2], tmp_path / "m.pt2")
    to_torchscript(model, x, tmp_path / "m.ts")
    with torch.no_grad():
        y = model(x)
    torch.save({"x": x, "y": y}, tmp_path / "ref.pt")
    code = (
        "import sys, torch, aihw_deploy\n"
        f"d = torch.load({str(tmp_path / 'ref.pt')!r})\n"
        f"ep = torch.export.load({str(tmp_path / 'm.pt2')!r})\n"
        f"ts = torch.jit.load({str(tmp_path / 'm.ts')!r})\n"
        "s = float(d['y'].abs().max())\n"
        "e1 = float((ep.module()(d['x']) - d['y']).abs().max()) / s\n"
        "e2 = float((ts(d['x']) - d['y']).abs().max()) / s\n"
        "print(e1, e2); sys.exit(0 if e1 <= 1e-5 and e2 <= 1e-5 else 1)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list(tmp_path.glob(".*part*"))  # atomic writes leave no temporary files


def test_eval_with_grad_still_backpropagates():
    model = AnalogSequential(AnalogLinear(5, 3, rpu_config=InferenceRPUConfig()))
    model.eval()
    x = torch.rand(2, 5, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_op_autograd_is_the_straight_through_product():
    x = torch.rand(3, 4, requires_grad=True)
    w = torch.rand(2, 4)
    io = encode_io(IOParameters(is_perfect=True, out_scale=2.0))
    y = torch.ops.aihw.analog_mvm(x, w, None, None, io, [512, 512], 0, 0)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), (2.0 * torch.ones(3, 2) @ w).numpy(), rtol=1e-6)
