"""CUDA in the PyTorch layer: tiles and layers on a GPU against the same layers on the CPU.

The GPU tests carry the ``cuda`` marker and skip without a CUDA build of rpucuda and a GPU
(``bash tools/gpu_check.sh`` runs them on a GPU machine).  The first tests run everywhere: they
check that asking for CUDA where it cannot work gives a clear CudaError before anything moves.

Tolerances: CPU products use rpucuda's fixed-order kernel and CUDA products cuBLAS, so the same
analog product differs by float rounding (relative ~1e-6 for these sizes).  Without ADC
quantization outputs then agree to 1e-4 absolute; with the default 9-bit ADC (step 2*12/510 =
0.047) an output lying within rounding of a threshold may move by one step: we allow at most 1%
of outputs one step apart and none further (noise is bit-identical: same Philox numbers, and
--fmad=false keeps the Box-Muller arithmetic exactly rounded).
"""

import io

import pytest
import torch
from torch import nn

from aihw_deploy.nn import AnalogConv2d, AnalogLinear, AnalogSequential
from aihw_deploy.optim import AnalogSGD
from aihw_deploy.simulator import cuda as rcuda
from aihw_deploy.simulator.configs import (
    ConstantStepDevice,
    FloatingPointRPUConfig,
    InferenceRPUConfig,
    SingleRPUConfig,
    SoftBoundsDevice,
)
from aihw_deploy.simulator.parameters import IOParameters
from aihw_deploy.simulator.tiles import CudaError

ADC_STEP = 2 * 12.0 / 510  # out_bound 12, out_res 1/510 (SPEC defaults)

gpu = pytest.mark.skipif(not rcuda.available(), reason="needs a CUDA build of rpucuda and a GPU")


# -- everywhere: clear errors -------------------------------------------------------------------------
@pytest.mark.skipif(rcuda.available(), reason="CUDA is available here")
@pytest.mark.parametrize("move", ["cuda()", "to('cuda')", "tile.cuda()"])
def test_cuda_request_without_cuda_is_a_clear_error(move):
    layer = AnalogLinear(3, 2, rpu_config=InferenceRPUConfig())
    before = layer.weight.detach().clone()
    with pytest.raises(CudaError, match="CUDA"):
        if move == "cuda()":
            layer.cuda()
        elif move == "to('cuda')":
            layer.to("cuda")
        else:
            next(layer.analog_tiles()).cuda()
    # nothing moved: the layer still works on the CPU with the same weights
    assert layer.weight.device.type == "cpu" and torch.equal(layer.weight.detach(), before)
    assert layer(torch.ones(1, 3)).shape == (1, 2)


def test_non_float32_conversion_is_refused():
    layer = AnalogLinear(3, 2)
    with pytest.raises(TypeError, match="float32"):
        layer.half()
    layer.float()  # a no-op conversion is fine


def test_input_on_other_device_names_both_devices():
    layer = AnalogLinear(3, 2)
    x = torch.ones(1, 3, device="meta")
    with pytest.raises(ValueError, match="meta.*cpu"):
        layer(x)


# -- GPU ------------------------------------------------------------------------------------------------
def _pair(make, seed=0):
    torch.manual_seed(seed)
    cpu = make()
    torch.manual_seed(seed)
    gpu_model = make()
    gpu_model.load_state_dict(cpu.state_dict())
    return cpu, gpu_model.cuda()


def _assert_adc_close(a, b, step=ADC_STEP, frac=0.01):
    a, b = a.detach().cpu(), b.detach().cpu()
    diff = (a - b).abs()
    assert float(diff.max()) <= step * 1.001 + 1e-5, f"max diff {float(diff.max())} beyond one ADC step"
    moved = float((diff > 1e-4).float().mean())
    assert moved <= frac, f"{moved:.2%} of outputs one ADC step apart (allowed {frac:.0%})"


@pytest.mark.cuda
@gpu
def test_floating_point_layer_matches_cpu():
    cpu, dev = _pair(lambda: AnalogLinear(96, 40, rpu_config=FloatingPointRPUConfig()))
    x = torch.randn(33, 96)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    yc, yg = cpu(xc), dev(xg)
    torch.testing.assert_close(yg.cpu(), yc, rtol=1e-5, atol=1e-5)
    yc.square().sum().backward()
    yg.square().sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dev.weight.grad.cpu(), cpu.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("max_in", [512, 40])  # one tile, and a 3x split with digital partial sums
def test_inference_layer_forward_matches_cpu_noise_included(max_in):
    cfg = InferenceRPUConfig()
    cfg.mapping.max_input_size = max_in
    cpu, dev = _pair(lambda: AnalogLinear(100, 64, rpu_config=cfg))
    for m in (cpu, dev):
        m.eval()
    x = torch.rand(200, 100) * 2 - 1
    with torch.no_grad():
        for _ in range(2):  # two calls: the call counters advance in step
            _assert_adc_close(dev(x.cuda()), cpu(x))


@pytest.mark.cuda
@gpu
def test_programmed_chip_matches_cpu():
    cfg = InferenceRPUConfig()
    cpu, dev = _pair(lambda: AnalogLinear(64, 32, rpu_config=cfg))
    for m in (cpu, dev):
        m.eval()
        m.program_analog_weights(seed=7)
        m.drift_analog_weights(3600.0)
    tc, tg = next(cpu.analog_tiles()), next(dev.analog_tiles())
    torch.testing.assert_close(tg.chip_weights.cpu(), tc.chip_weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tg.alpha.cpu(), tc.alpha, rtol=1e-3, atol=1e-5)
    x = torch.rand(64, 64)
    with torch.no_grad():
        _assert_adc_close(dev(x.cuda()), cpu(x), step=ADC_STEP * float(tc.alpha.max()) * 1.01)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("device", [ConstantStepDevice, SoftBoundsDevice])
def test_pulsed_layer_trains_like_cpu_in_expectation(device):
    """Same seeds: the pulse trains are identical; with dw_min_std = 0 the cycle-to-cycle noise is
    off, so one update step moves the CPU and CUDA weights to within float rounding."""
    cfg = SingleRPUConfig(device=device(dw_min_std=0.0))
    cfg.forward = IOParameters(is_perfect=True)
    cfg.backward = IOParameters(is_perfect=True)
    cpu, dev = _pair(lambda: AnalogLinear(32, 16, bias=False, rpu_config=cfg))
    x, target = torch.rand(8, 32), torch.rand(8, 16)
    for m, xx, tt in ((cpu, x, target), (dev, x.cuda(), target.cuda())):
        opt = AnalogSGD(m.parameters(), lr=0.1)
        opt.zero_grad()
        nn.functional.mse_loss(m(xx), tt).backward()
        opt.step()
    torch.testing.assert_close(dev.weight.detach().cpu(), cpu.weight.detach(), rtol=0, atol=1e-5)


@pytest.mark.cuda
@gpu
def test_small_model_trains_on_cuda():
    from aihw_deploy.examples.digits import accuracy, build_mlp, load_digits_split, train

    xtr, ytr, xte, yte = load_digits_split()
    torch.manual_seed(0)
    model = build_mlp(SingleRPUConfig(device=ConstantStepDevice())).cuda()
    train(model, xtr.cuda(), ytr.cuda(), epochs=10, lr=0.3)
    assert next(model.analog_tiles()).weight.is_cuda
    acc = accuracy(model, xte.cuda(), yte.cuda())
    assert acc >= 0.93, acc  # 30 epochs on the CPU reach ~97%; 10 epochs comfortably exceed 93%


@pytest.mark.cuda
@gpu
def test_conv_layer_matches_cpu():
    cfg = InferenceRPUConfig()
    cpu, dev = _pair(lambda: AnalogConv2d(3, 8, 3, padding=1, rpu_config=cfg))
    for m in (cpu, dev):
        m.eval()
    x = torch.rand(4, 3, 10, 10)
    with torch.no_grad():
        _assert_adc_close(dev(x.cuda()), cpu(x))


@pytest.mark.cuda
@gpu
def test_checkpoints_move_between_cpu_and_cuda():
    cfg = InferenceRPUConfig()
    torch.manual_seed(1)
    model = AnalogSequential(AnalogLinear(16, 8, rpu_config=cfg), nn.ReLU(), AnalogLinear(8, 4, rpu_config=cfg)).cuda()
    model.eval()
    model.program_analog_weights(seed=3)
    model.drift_analog_weights(60.0)
    sd = model.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True, map_location="cpu")
    torch.manual_seed(2)
    cpu_model = AnalogSequential(AnalogLinear(16, 8, rpu_config=cfg), nn.ReLU(), AnalogLinear(8, 4, rpu_config=cfg))
    cpu_model.load_state_dict(loaded)
    cpu_model.eval()
    for tg, tc in zip(model.analog_tiles(), cpu_model.analog_tiles()):
        torch.testing.assert_close(tc.weight.detach(), tg.weight.detach().cpu())
        torch.testing.assert_close(tc.chip_weights, tg.chip_weights.cpu(), rtol=1e-5, atol=1e-6)
    # and back: the CPU model moved to CUDA keeps its chip
    back = cpu_model.cuda()
    for tb, tg in zip(back.analog_tiles(), model.analog_tiles()):
        assert tb.chip_weights.is_cuda and tb.programmed is not None
        torch.testing.assert_close(tb.chip_weights, tg.chip_weights, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@gpu
def test_pulsed_tile_round_trip_keeps_weights_and_generator():
    cfg = SingleRPUConfig(device=ConstantStepDevice())
    torch.manual_seed(0)
    layer = AnalogLinear(12, 6, rpu_config=cfg)
    w0 = layer.weight.detach().clone()
    layer.cuda()
    tile = next(layer.analog_tiles())
    assert tile._cells is not None and tile._cells.is_cuda
    layer.cpu()
    torch.testing.assert_close(layer.weight.detach(), w0)
    assert tile._cells is None
