"""PyTorch layer: analog modules against torch references, training, checkpoints, errors."""

import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.functional import mse_loss

from aihw_deploy.nn import (AnalogConv1d, AnalogConv2d, AnalogConv3d, AnalogLinear, AnalogSequential,
                            convert_to_analog, convert_to_digital)
from aihw_deploy.optim import AnalogSGD
from aihw_deploy.simulator.configs import (ConstantStepDevice, FloatingPointRPUConfig, InferenceRPUConfig,
                                           IOParameters, MappingParameter, SingleRPUConfig)
from aihw_deploy.simulator.tiles import CudaError


def test_seed_example_trains_to_small_loss():
    # SEED.txt: AnalogLinear(2, 1), AnalogSGD(lr=0.5), 100 epochs.
    torch.manual_seed(0)
    x_b = torch.tensor([[0.1, 0.2, 0.4, 0.3], [0.2, 0.1, 0.1, 0.3]])[:, :2]
    y_b = torch.tensor([[1.0], [0.5]]) * 0.5
    model = AnalogLinear(2, 1)
    opt = AnalogSGD(model.parameters(), lr=0.5)
    opt.regroup_param_groups(model)
    first = None
    for _ in range(100):
        opt.zero_grad()
        loss = mse_loss(model(x_b), y_b)
        first = first if first is not None else float(loss.detach())
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first  # loss falls by more than 20x


def test_constant_step_4x2_trains():
    torch.manual_seed(1)
    x = torch.rand(8, 4)
    w_true = torch.tensor([[0.3, -0.2, 0.1, 0.25], [-0.1, 0.2, -0.3, 0.05]])
    y = x @ w_true.T
    model = AnalogLinear(4, 2, bias=False, rpu_config=SingleRPUConfig(device=ConstantStepDevice()))
    opt = AnalogSGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # Output noise (0.06 · max|x|) limits the floor; the loss must drop by a large factor.
    assert losses[-1] < 0.1 * losses[0]
    assert sum(losses[-20:]) / 20 < 0.01


def _perfect():
    return SingleRPUConfig(device=ConstantStepDevice(w_max=10, w_min=-10, w_max_dtod=0, w_min_dtod=0),
                           forward=IOParameters(is_perfect=True), backward=IOParameters(is_perfect=True))


@pytest.mark.parametrize("cfg", [None, "perfect"])
def test_linear_matches_torch(cfg):
    torch.manual_seed(0)
    ref = nn.Linear(7, 5)
    a = convert_to_analog(ref, _perfect() if cfg else None)
    x = torch.randn(3, 2, 7)
    torch.testing.assert_close(a(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims,cls,tcls", [(1, AnalogConv1d, nn.Conv1d), (2, AnalogConv2d, nn.Conv2d),
                                           (3, AnalogConv3d, nn.Conv3d)])
def test_conv_forward_backward_match_torch(dims, cls, tcls):
    torch.manual_seed(0)
    ref = tcls(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    a = convert_to_analog(ref)
    assert isinstance(a, cls)
    shape = (2, 4) + (9,) * dims
    x = torch.randn(*shape, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    ya, yr = a(x), ref(x2)
    torch.testing.assert_close(ya, yr, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(yr)
    ya.backward(g)
    yr.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.group_weights[0].grad.reshape(3, -1), ref.weight.grad[:3].reshape(3, -1),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2300, 1 << 19])
def test_conv_weight_gradient_in_chunks_matches_torch(chunk, monkeypatch):
    # The weight gradient of exact-gradient tiles is accumulated over chunks of images (the
    # unfolded input never exists whole): 1 element = one image per chunk, 2300 = two images (of
    # 42 x 27 elements) with a partial last chunk, 2^19 = all at once; each against torch's gradient.
    from aihw_deploy.nn.modules import conv as conv_module

    monkeypatch.setattr(conv_module, "_GRAD_CHUNK", chunk)
    torch.manual_seed(1)
    ref = nn.Conv2d(3, 4, 3, padding=1, groups=1)
    a = convert_to_analog(ref)
    x = torch.randn(5, 3, 6, 7)
    g = torch.randn(5, 4, 6, 7)
    a(x).backward(g)
    ref(x).backward(g)
    torch.testing.assert_close(next(a.analog_tiles()).weight.grad.reshape(4, -1), ref.weight.grad.reshape(4, -1),
                               rtol=1e-4, atol=1e-5)


def test_conv2d_dilation_matches_torch():
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 5, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1))
    a = convert_to_analog(ref)
    x = torch.randn(2, 3, 10, 11)
    torch.testing.assert_close(a(x), ref(x), rtol=1e-4, atol=1e-5)


def test_tiled_layer_matches_torch_with_perfect_io():
    torch.manual_seed(0)
    cfg = _perfect()
    cfg.mapping = MappingParameter(max_input_size=64, max_output_size=32)
    ref = nn.Linear(150, 70)
    a = convert_to_analog(ref, cfg)
    x = torch.randn(5, 150)
    torch.testing.assert_close(a(x), ref(x), rtol=1e-4, atol=1e-5)


def test_inference_forward_is_noisy_and_close():
    torch.manual_seed(0)
    a = AnalogLinear(64, 16, rpu_config=InferenceRPUConfig())
    a.eval()
    x = torch.rand(32, 64)
    w, b = a.get_weights()
    ref = x @ w.T + b
    y1, y2 = a(x), a(x)
    assert not torch.equal(y1, y2)  # fresh output noise per call
    # out_noise 0.06 times the noise-management scale max|x| (<= 1), plus quantization.
    assert (y1 - ref).abs().max() < 0.06 * 6 + 0.05


def test_convert_roundtrip():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    a = convert_to_analog(ref)
    assert isinstance(a, AnalogSequential)
    assert len(list(a.analog_tiles())) == 2
    d = convert_to_digital(a)
    x = torch.randn(3, 8)
    torch.testing.assert_close(d(x), ref(x))


def _train_steps(model, x, y, n, opt):
    for _ in range(n):
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("cfg_fn", [FloatingPointRPUConfig, lambda: SingleRPUConfig(device=ConstantStepDevice()),
                                    InferenceRPUConfig])
def test_checkpoint_resume_is_identical(cfg_fn, tmp_path):
    torch.manual_seed(0)
    x, y = torch.rand(16, 6), torch.rand(16, 3)
    model = AnalogSequential(AnalogLinear(6, 5, rpu_config=cfg_fn()), nn.Tanh(), AnalogLinear(5, 3, rpu_config=cfg_fn()))
    opt = AnalogSGD(model.parameters(), lr=0.1)
    _train_steps(model, x, y, 5, opt)
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    _train_steps(model, x, y, 5, opt)
    expected = [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(123)  # different init and seeds: everything must come from the checkpoint
    fresh = AnalogSequential(AnalogLinear(6, 5, rpu_config=cfg_fn()), nn.Tanh(), AnalogLinear(5, 3, rpu_config=cfg_fn()))
    fresh.load_state_dict(torch.load(path))  # weights_only=True by default
    opt2 = AnalogSGD(fresh.parameters(), lr=0.1)
    _train_steps(fresh, x, y, 5, opt2)
    for a, b in zip(expected, fresh.parameters()):
        assert torch.equal(a, b.detach())


def test_whole_model_pickle_continues_identically():
    torch.manual_seed(0)
    x, y = torch.rand(8, 4), torch.rand(8, 2)
    model = AnalogLinear(4, 2, rpu_config=SingleRPUConfig(device=ConstantStepDevice()))
    opt = AnalogSGD(model.parameters(), lr=0.1)
    _train_steps(model, x, y, 3, opt)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    clone = torch.load(buf, weights_only=False)
    _train_steps(model, x, y, 3, opt)
    _train_steps(clone, x, y, 3, AnalogSGD(clone.parameters(), lr=0.1))
    assert torch.equal(model.weight, clone.weight)
    assert pickle.loads(pickle.dumps(model.rpu_config)) == model.rpu_config


def test_load_into_wrong_shape_or_config_fails_clearly():
    a = AnalogLinear(4, 2, rpu_config=InferenceRPUConfig())
    sd = a.state_dict()
    with pytest.raises((ValueError, RuntimeError), match="size mismatch|shape"):
        AnalogLinear(5, 2, rpu_config=InferenceRPUConfig()).load_state_dict(sd)
    with pytest.raises(ValueError, match="InferenceRPUConfig"):
        AnalogLinear(4, 2, rpu_config=FloatingPointRPUConfig()).load_state_dict(sd)


def test_bad_inputs_name_the_layer():
    layer = AnalogLinear(64, 3)
    with pytest.raises(ValueError, match=r"AnalogLinear\(in_features=64\): input has 63 features"):
        layer(torch.zeros(2, 63))
    with pytest.raises(TypeError, match="float32"):
        layer(torch.zeros(2, 64, dtype=torch.float64))
    with pytest.raises(TypeError, match="rpu_config"):
        AnalogLinear(4, 2, rpu_config="fast")
    with pytest.raises(ValueError, match="in_channels"):
        AnalogConv2d(3, 4, 3)(torch.zeros(1, 2, 5, 5))
    with pytest.raises(TypeError, match="IOParameters.out_noise"):
        InferenceRPUConfig(forward=IOParameters(out_noise="high"))
    with pytest.raises(ValueError, match="NaN"):
        layer(torch.full((1, 64), float("nan")))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("config", ["fp", "cs", "inf"])
@pytest.mark.parametrize("mode", ["train", "eval", "eval_grad"])
def test_conv_rejects_non_finite_input_in_every_path(bad, config, mode):
    # On the CPU the convolution finds NaN and Inf in its own pass over the input (io_conv), in
    # training and in eval; one bad element, in the last channel of the second group and the last
    # image, is enough.  Floating-point layers in eval run F.conv2d and are checked beforehand.
    cfg = {"fp": FloatingPointRPUConfig, "cs": lambda: SingleRPUConfig(device=ConstantStepDevice()),
           "inf": InferenceRPUConfig}[config]()
    layer = AnalogConv2d(4, 6, 3, padding=1, groups=2, rpu_config=cfg)
    layer.train(mode == "train")
    x = torch.rand(3, 4, 5, 5)
    with torch.set_grad_enabled(mode != "eval"):
        layer(x)  # finite: fine
        x[2, 3, 4, 4] = bad
        with pytest.raises(ValueError, match=r"AnalogConv2d\(in_channels=4\): input contains NaN or Inf"):
            layer(x)


def test_cuda_request_is_clear_without_cuda_build():
    from aihw_deploy.simulator import rpu_base

    layer = AnalogLinear(3, 2)
    if not rpu_base.cuda.is_compiled():
        with pytest.raises(CudaError):
            next(layer.analog_tiles()).cuda()


def test_lr_scheduler_changes_pulsed_update_size():
    torch.manual_seed(0)
    layer = AnalogLinear(4, 2, bias=False, rpu_config=SingleRPUConfig(device=ConstantStepDevice(dw_min_std=0.0)))
    opt = AnalogSGD(layer.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.0)
    x, y = torch.rand(4, 4), torch.rand(4, 2)
    _train_steps(layer, x, y, 1, opt)
    sched.step()  # lr -> 0: the tile must not change any more
    before = layer.weight.detach().clone()
    _train_steps(layer, x, y, 2, opt)
    assert torch.equal(before, layer.weight.detach())
