"""Hardware-aware training and inference at the layer level (SPEC §4.4): weight modifiers,
clipping, remapping, train/eval semantics, chip seeds, checkpoints of programmed models, and
``evaluate_drift``.

Statistical checks allow Z = 5 standard errors: the sample mean of n values of std s has standard
error s/sqrt(n), a sample std the relative error 1/sqrt(2(n-1)), a fraction p the error
sqrt(p(1-p)/n).  Seeds are fixed.
"""

import io
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from aihw_deploy.inference import (
    DriftTable,
    PerColumnDriftCompensation,
    drift_analog_weights,
    evaluate_drift,
    format_time,
    program_analog_weights,
)
from aihw_deploy.nn import AnalogLinear, AnalogSequential
from aihw_deploy.nn.conversion import convert_to_digital
from aihw_deploy.optim import AnalogSGD
from aihw_deploy.simulator.configs import (
    FloatingPointRPUConfig,
    InferenceRPUConfig,
    IOParameters,
    WeightClipParameter,
    WeightClipType,
    WeightModifierParameter,
    WeightModifierType,
    WeightRemapParameter,
    WeightRemapType,
)
from aihw_deploy.simulator.tiles.modifiers import modify_weights

Z = 5.0
MT = WeightModifierType
PERFECT = IOParameters(is_perfect=True)
ONE_YEAR = 31536000.0


def levels(vals, n=20000, sign=True):
    """[len(vals), n]: row i holds +-vals[i] (random signs)."""
    g = torch.Generator().manual_seed(0)
    s = torch.where(torch.rand(len(vals), n, generator=g) < 0.5, -1.0, 1.0) if sign else torch.ones(len(vals), n)
    return torch.tensor(vals, dtype=torch.float32)[:, None] * s


def check_normal(z, what):
    """z should be standard normal: mean 0 and std 1 within Z standard errors."""
    z = z.detach().double().flatten()
    n = z.numel()
    assert abs(float(z.mean())) < Z / math.sqrt(n), (what, float(z.mean()))
    assert abs(float(z.std()) - 1) < Z / math.sqrt(2 * (n - 1)), (what, float(z.std()))


# --------------------------------------------------------------------------- modifiers


@pytest.mark.parametrize("rel", [True, False])
def test_add_normal(rel):
    # w' = w + std_dev * wmax * xi, wmax = max|w| (rel_to_actual_wmax) or assumed_wmax.
    torch.manual_seed(1)
    w = torch.rand(200, 300) * 1.4 - 0.7
    p = WeightModifierParameter(type=MT.ADD_NORMAL, std_dev=0.05, rel_to_actual_wmax=rel, assumed_wmax=2.0)
    wmax = float(w.abs().max()) if rel else 2.0
    check_normal((modify_weights(w, p) - w) / (0.05 * wmax), "ADD_NORMAL")


def test_mult_normal():
    # w' = w (1 + std_dev xi).
    torch.manual_seed(2)
    w = torch.rand(200, 300) + 0.1
    p = WeightModifierParameter(type=MT.MULT_NORMAL, std_dev=0.1)
    check_normal((modify_weights(w, p) / w - 1) / 0.1, "MULT_NORMAL")


@pytest.mark.parametrize("res", [0.1, 1 / 30, 16.0])
def test_discretize(res):
    # w' = round(w / step) * step with step = res * wmax (res > 1: 1/res).
    torch.manual_seed(3)
    w = torch.randn(100, 100)
    out = modify_weights(w, WeightModifierParameter(type=MT.DISCRETIZE, res=res))
    step = (res if res <= 1 else 1 / res) * float(w.abs().max())
    k = out / step
    assert torch.allclose(k, k.round(), atol=1e-4)
    assert float((out - w).abs().max()) <= step / 2 * (1 + 1e-5)
    torch.testing.assert_close(out, torch.round(w / step) * step)


def test_discretize_add_normal():
    torch.manual_seed(4)
    w = torch.randn(200, 200)
    wmax = float(w.abs().max())
    out = modify_weights(w, WeightModifierParameter(type=MT.DISCRETIZE_ADD_NORMAL, res=0.1, std_dev=0.02))
    step = 0.1 * wmax
    check_normal((out - torch.round(w / step) * step) / (0.02 * wmax), "DISCRETIZE_ADD_NORMAL")


def test_poly():
    # std = std_dev * wmax * (c0 + c1 |w|/wmax + c2 (w/wmax)^2), per weight level.
    torch.manual_seed(5)
    vals = [1.0, 0.6, 0.2, 0.05]
    w = levels(vals)
    p = WeightModifierParameter(type=MT.POLY, std_dev=0.5, coeffs=[0.1, 0.3, -0.2])
    out = modify_weights(w, p)
    for i, v in enumerate(vals):
        s = 0.5 * 1.0 * (0.1 + 0.3 * v - 0.2 * v * v)
        check_normal((out[i] - w[i]) / s, f"POLY level {v}")


def test_pcm_noise():
    # std = std_dev * wmax * sigma_prog(g)/25 with g = |w|/wmax and the SPEC §4.2 polynomial at
    # g_max = 25 µS: the programming noise of a full-range mapping in weight units.
    torch.manual_seed(6)
    vals = [1.0, 0.5, 0.1, 0.0]
    w = levels(vals) * 0.8  # wmax = 0.8
    out = modify_weights(w, WeightModifierParameter(type=MT.PCM_NOISE, std_dev=2.0))
    for i, v in enumerate(vals):
        s = 2.0 * 0.8 * (0.26348 + 1.9650 * v - 1.1731 * v * v) / 25.0
        check_normal((out[i] - w[i]) / s, f"PCM_NOISE level {v}")


@pytest.mark.parametrize("pdrop", [0.1, 0.5])
def test_drop_connect(pdrop):
    torch.manual_seed(7)
    w = torch.rand(300, 300) + 0.5
    out = modify_weights(w, WeightModifierParameter(type=MT.DROP_CONNECT, pdrop=pdrop))
    n = w.numel()
    frac = float((out == 0).double().mean())
    assert abs(frac - pdrop) < Z * math.sqrt(pdrop * (1 - pdrop) / n)
    kept = out != 0
    assert torch.equal(out[kept], w[kept])


def test_none_returns_weights():
    w = torch.randn(3, 4)
    assert torch.equal(modify_weights(w, WeightModifierParameter()), w)


def test_modifier_parameter_bad_values():
    with pytest.raises(ValueError, match="std_dev"):
        WeightModifierParameter(std_dev=-1)
    with pytest.raises(ValueError, match="pdrop"):
        WeightModifierParameter(pdrop=1.5)


# --------------------------------------------------------------------------- train / eval semantics


def layer(in_f=32, out_f=16, bias=False, **cfg):
    cfg.setdefault("forward", PERFECT)
    torch.manual_seed(0)
    return AnalogLinear(in_f, out_f, bias=bias, rpu_config=InferenceRPUConfig(**cfg))


def test_train_forward_uses_modified_copy_once_per_batch():
    lay = layer(modifier=WeightModifierParameter(type=MT.ADD_NORMAL, std_dev=0.1))
    w = lay.weight.detach().clone()
    wmax = float(w.abs().max())
    lay.train()
    x = torch.zeros(4, 32)
    x[:, 3] = 1.0  # every row reads column 3
    y = lay(x)
    # One modified copy per forward (mini-batch): all four rows see the same weights ...
    assert torch.equal(y[0], y[1]) and torch.equal(y[0], y[3])
    # ... perturbed by std_dev * wmax: (y - W[:, 3]) / (0.1 wmax) is N(0, 1) over outputs.
    devs = torch.stack([lay(x)[0] - w[:, 3] for _ in range(300)])
    check_normal(devs / (0.1 * wmax), "train-mode ADD_NORMAL")
    # A fresh copy for the next batch; the reference weights are untouched.
    assert not torch.equal(lay(x)[0], y[0])
    assert torch.equal(lay.weight.detach(), w)


def test_train_backward_uses_unmodified_weights():
    lay = layer(modifier=WeightModifierParameter(type=MT.ADD_NORMAL, std_dev=0.5))
    lay.train()
    x = torch.randn(5, 32, requires_grad=True)
    d = torch.randn(5, 16)
    lay(x).backward(d)
    torch.testing.assert_close(x.grad, d @ lay.weight.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lay.weight.grad, d.T @ x.detach(), rtol=1e-5, atol=1e-5)


def test_eval_without_programming_uses_reference_weights_through_io():
    lay = layer(bias=True, modifier=WeightModifierParameter(type=MT.ADD_NORMAL, std_dev=0.3))
    lay.eval()
    x = torch.randn(6, 32)
    w, b = lay.get_weights()
    torch.testing.assert_close(lay(x), x @ w.T + b, rtol=1e-5, atol=1e-5)
    # With the default (noisy, quantized) periphery the same weights are read through the IO
    # pipeline: close to, but not exactly, the product.
    torch.manual_seed(0)
    noisy = AnalogLinear(32, 16, bias=False, rpu_config=InferenceRPUConfig())
    noisy.eval()
    x = torch.rand(200, 32)
    ref = x @ noisy.weight.detach().T
    y = noisy(x).detach()
    assert not torch.equal(y, ref)
    assert float((y - ref).norm() / ref.norm()) < 0.2


def test_enable_during_test():
    x = torch.randn(6, 32)
    for flag in (False, True):
        lay = layer(modifier=WeightModifierParameter(type=MT.ADD_NORMAL, std_dev=0.3, enable_during_test=flag))
        lay.eval()
        ref = x @ lay.weight.detach().T
        same = torch.allclose(lay(x), ref, rtol=1e-5, atol=1e-5)
        assert same != flag


def test_eval_after_programming_uses_chip_weights_and_alpha():
    lay = layer(in_f=64, out_f=32, modifier=WeightModifierParameter(type=MT.ADD_NORMAL, std_dev=0.3))
    lay.eval()
    x = torch.randn(8, 64)
    lay.program_analog_weights(seed=1)
    lay.drift_analog_weights(86400.0)
    tile = next(lay.analog_tiles())
    assert tile.chip_weights is not None and not torch.equal(tile.chip_weights, lay.weight.detach())
    torch.testing.assert_close(lay(x), (x @ tile.chip_weights.T) * tile.alpha, rtol=1e-5, atol=1e-5)
    # Train mode ignores the chip: the (modified) reference weights again.
    lay2 = layer(in_f=64, out_f=32)
    lay2.program_analog_weights(seed=1)
    lay2.train()
    torch.testing.assert_close(lay2(x), x @ lay2.weight.detach().T, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- clip and remap


def _step(lay):
    """One optimizer step with zero gradient: only the post-update step (clip/remap) acts."""
    opt = AnalogSGD(lay.parameters(), lr=0.0)
    opt.regroup_param_groups(lay)
    opt.zero_grad()
    lay(torch.zeros(1, lay.in_features)).sum().backward()
    opt.step()


@pytest.mark.parametrize("kind", ["none", "fixed", "gaussian", "channel_max"])
def test_clip_types(kind):
    torch.manual_seed(1)
    w = torch.randn(16, 32) * 0.5
    p = {"none": WeightClipParameter(),
         "fixed": WeightClipParameter(type=WeightClipType.FIXED_VALUE, fixed_value=0.3),
         "gaussian": WeightClipParameter(type=WeightClipType.LAYER_GAUSSIAN, sigma=1.5),
         "channel_max": WeightClipParameter(type=WeightClipType.AVERAGE_CHANNEL_MAX)}[kind]
    bound = {"none": math.inf, "fixed": 0.3, "gaussian": 1.5 * float(w.std()),
             "channel_max": float(w.abs().max(dim=1).values.mean())}[kind]
    lay = layer(clip=p)
    lay.set_weights(w)
    _step(lay)
    torch.testing.assert_close(lay.weight.detach(), w.clamp(-bound, bound))
    if kind != "none":
        assert float(lay.weight.detach().abs().max()) == pytest.approx(bound, rel=1e-6)


@pytest.mark.parametrize("kind", [WeightRemapType.LAYERWISE_SYMMETRIC, WeightRemapType.CHANNELWISE_SYMMETRIC])
def test_remap_keeps_layer_function(kind):
    torch.manual_seed(2)
    w = torch.randn(16, 32) * 0.3
    lay = layer(bias=True, remap=WeightRemapParameter(type=kind, remapped_wmax=0.8))
    lay.set_weights(w, torch.randn(16))
    lay.eval()
    x = torch.randn(10, 32)
    before = lay(x).detach()
    _step(lay)
    tw = lay.weight.detach()
    tile = next(lay.analog_tiles())
    if kind == WeightRemapType.LAYERWISE_SYMMETRIC:
        assert float(tw.abs().max()) == pytest.approx(0.8, rel=1e-6)
        torch.testing.assert_close(tile.out_scaling, torch.full((16,), float(w.abs().max()) / 0.8))
    else:
        torch.testing.assert_close(tw.abs().max(dim=1).values, torch.full((16,), 0.8))
        torch.testing.assert_close(tile.out_scaling, w.abs().max(dim=1).values / 0.8)
    torch.testing.assert_close(lay(x).detach(), before, rtol=1e-5, atol=1e-5)
    # get_weights gives the effective weights; digital conversion and set_weights keep the function.
    torch.testing.assert_close(lay.get_weights()[0], w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(convert_to_digital(lay)(x).detach(), before, rtol=1e-5, atol=1e-5)
    lay.set_weights(*lay.get_weights())
    torch.testing.assert_close(lay(x).detach(), before, rtol=1e-5, atol=1e-5)


def test_remap_gradients_follow_the_chain_rule():
    # y = s * (W_tile x) with the digital scale s: dL/dW_tile = (s * d)^T x and dL/dx = d @ W_eff.
    torch.manual_seed(3)
    lay = layer(in_f=8, out_f=4, remap=WeightRemapParameter(type=WeightRemapType.CHANNELWISE_SYMMETRIC))
    lay.set_weights(torch.randn(4, 8) * 0.2)
    _step(lay)
    tile = next(lay.analog_tiles())
    s = tile.out_scaling
    assert not torch.allclose(s, torch.ones(4))
    lay.train()
    lay.weight.grad = None
    x = torch.randn(6, 8, requires_grad=True)
    d = torch.randn(6, 4)
    lay(x).backward(d)
    torch.testing.assert_close(lay.weight.grad, (d * s).T @ x.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, d @ lay.get_weights()[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- seeds and checkpoints


def mlp(cfg=None):
    torch.manual_seed(0)
    cfg = cfg or InferenceRPUConfig()
    return AnalogSequential(AnalogLinear(16, 24, rpu_config=cfg), nn.ReLU(), AnalogLinear(24, 5, rpu_config=cfg))


def chips(model):
    return [t.chip_weights.clone() for t in model.analog_tiles()]


def test_same_seed_same_chip():
    m = mlp()
    m.eval()
    m.program_analog_weights(seed=5)
    m.drift_analog_weights(3600.0)
    a = chips(m)
    m.program_analog_weights(seed=5)
    m.drift_analog_weights(3600.0)
    b = chips(m)
    program_analog_weights(m, seed=6)
    drift_analog_weights(m, 3600.0)
    c = chips(m)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y)
        assert float((x != z).float().mean()) > 0.8
    # The two tiles of one model get different seeds (seed + i).
    tiles = list(m.analog_tiles())
    assert tiles[0].program_seed != tiles[1].program_seed


def test_checkpoint_restores_programmed_chip():
    m = mlp()
    m.eval()
    m.program_analog_weights(seed=3)
    m.drift_analog_weights(86400.0)
    x = torch.rand(7, 16)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(99)  # different tile seeds in a fresh model: all comes from the checkpoint
    m2 = AnalogSequential(AnalogLinear(16, 24, rpu_config=InferenceRPUConfig()), nn.ReLU(),
                          AnalogLinear(24, 5, rpu_config=InferenceRPUConfig()))
    m2.load_state_dict(torch.load(buf))
    m2.eval()
    for t1, t2 in zip(m.analog_tiles(), m2.analog_tiles()):
        assert torch.equal(t1.chip_weights, t2.chip_weights)
        assert torch.equal(t1.alpha, t2.alpha)
        assert t2.t_inference == 86400.0 and t2.program_seed == t1.program_seed
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))  # same chip and same IO noise counters
    # Later drift of the restored chip equals that of the original.
    m.drift_analog_weights(ONE_YEAR)
    m2.drift_analog_weights(ONE_YEAR)
    for t1, t2 in zip(m.analog_tiles(), m2.analog_tiles()):
        assert torch.equal(t1.chip_weights, t2.chip_weights)
        assert torch.equal(t1.alpha, t2.alpha)


def test_checkpoint_right_after_programming():
    m = mlp()
    m.program_analog_weights(seed=8)
    m2 = mlp()
    m2.load_state_dict(m.state_dict())
    for t1, t2 in zip(m.analog_tiles(), m2.analog_tiles()):
        assert torch.equal(t1.chip_weights, t2.chip_weights) and torch.equal(t1.alpha, t2.alpha)


def test_drift_bad_time():
    m = mlp()
    for t in (-1.0, float("nan"), float("inf"), -1e-9):
        with pytest.raises(ValueError, match="t_inference"):
            m.drift_analog_weights(t)
        with pytest.raises(ValueError, match="t_inference"):
            drift_analog_weights(m, t)
        with pytest.raises(ValueError, match="t_inference"):
            next(m.analog_tiles()).drift(t)


def test_drift_before_programming_programs_with_tile_seed():
    m = mlp()
    m.drift_analog_weights(10.0)  # programs first (each tile with its own seed)
    for t in m.analog_tiles():
        assert t.program_seed == t.seed and t.t_inference == 10.0


def test_program_without_noise_model():
    lay = AnalogLinear(4, 2, rpu_config=InferenceRPUConfig(noise_model=None))
    with pytest.raises(RuntimeError, match="noise_model"):
        lay.program_analog_weights()


# --------------------------------------------------------------------------- evaluate_drift


def toy(cfg=None, seed=0):
    """A small classifier and data it mostly gets right (labels from its own digital outputs)."""
    torch.manual_seed(seed)
    cfg = cfg or InferenceRPUConfig()
    m = AnalogSequential(AnalogLinear(12, 20, rpu_config=cfg), nn.ReLU(), AnalogLinear(20, 4, rpu_config=cfg))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(120, 12, generator=g)
    d = convert_to_digital(m)
    with torch.no_grad():
        y = d(x).argmax(1)
    return m, x, y


TIMES = (1.0, 3600.0, 86400.0, 2592000.0, ONE_YEAR)


def test_format_time():
    assert [format_time(t) for t in TIMES] == ["1 s", "1 h", "1 d", "30 d", "1 y"]
    assert format_time(0) == "0 s" and format_time(90) == "1.5 min" and format_time(0.5) == "0.5 s"


def test_evaluate_drift_table():
    m, x, y = toy()
    tab = evaluate_drift(m, (x, y), repeats=3, progress=False)
    assert isinstance(tab, DriftTable)
    assert len(tab.rows) == 5 and tab.times == list(TIMES) and tab.repeats == 3
    assert set(tab.rows[0]) == {"model", "t_inference", "mean", "std"}
    assert [r["t_inference"] for r in tab.rows] == list(TIMES)
    for r in tab.rows:
        assert 0.0 <= r["mean"] <= 1.0 and r["std"] >= 0.0
    assert tab.values["model"].shape == (5, 3)
    text = str(tab)
    assert text == tab.to_text()
    for lab in ("1 s", "1 h", "1 d", "30 d", "1 y", "model", "accuracy (%)"):
        assert lab in text
    # Each row's mean/std over repeats, from the raw values.
    assert tab.rows[2]["mean"] == pytest.approx(float(tab.values["model"][2].mean()))
    # Reasonable numbers: the chip mostly agrees with the digital teacher.
    assert tab.get("model", 1.0)["mean"] > 0.5  # 4 classes: chance is 0.25


def test_evaluate_drift_is_deterministic_and_seeded():
    m, x, y = toy(InferenceRPUConfig(forward=IOParameters(out_noise=0.1)))
    a = evaluate_drift(m, (x, y), times=(1.0, ONE_YEAR), repeats=3, seed=1, progress=False)
    b = evaluate_drift(m, (x, y), times=(1.0, ONE_YEAR), repeats=3, seed=1, progress=False)
    c = evaluate_drift(m, (x, y), times=(1.0, ONE_YEAR), repeats=3, seed=2, progress=False)
    assert a.rows == b.rows
    assert not np.array_equal(a.values["model"], c.values["model"])
    # Repeats are different chips.
    mse = lambda out, tgt: float(((out - out.mean()) ** 2).mean())  # noqa: E731
    v = evaluate_drift(m, (x, y), times=(ONE_YEAR,), repeats=3, metric=mse, progress=False).values["model"][0]
    assert len(set(v.tolist())) == 3


def test_evaluate_drift_restores_model_state():
    m, x, y = toy()
    m.train()
    evaluate_drift(m, (x, y), times=(1.0,), repeats=2, progress=False)
    assert m.training and all(t.training for t in m.analog_tiles())
    assert all(t.chip_weights is None and t.programmed is None for t in m.analog_tiles())
    # A programmed model in eval mode keeps its chip.
    m.eval()
    m.program_analog_weights(seed=77)
    m.drift_analog_weights(60.0)
    before = chips(m)
    calls = [t.call for t in m.analog_tiles()]
    evaluate_drift(m, (x, y), times=(1.0, 100.0), repeats=2, progress=False)
    assert not m.training
    assert all(torch.equal(a, b) for a, b in zip(before, chips(m)))
    assert [t.t_inference for t in m.analog_tiles()] == [60.0, 60.0]
    assert [t.call for t in m.analog_tiles()] == calls


def test_evaluate_drift_data_forms():
    # A perfect periphery makes the result independent of the batching.
    m, x, y = toy(InferenceRPUConfig(forward=PERFECT))
    kw = dict(times=(1.0, ONE_YEAR), repeats=2, progress=False)
    ref = evaluate_drift(m, (x, y), **kw)
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(ds, batch_size=32)
    assert evaluate_drift(m, loader, **kw).rows == ref.rows
    gen = ((x[i:i + 50], y[i:i + 50]) for i in range(0, 120, 50))  # one-shot iterator
    assert evaluate_drift(m, gen, **kw).rows == ref.rows
    assert evaluate_drift(m, [x.numpy(), y.numpy()], **kw).rows == ref.rows
    onehot = torch.nn.functional.one_hot(y, 4).float()
    assert evaluate_drift(m, (x, onehot), **kw).rows == ref.rows


def test_evaluate_drift_custom_metric():
    m, x, y = toy(InferenceRPUConfig(forward=PERFECT))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=40)

    def top2(out, tgt):
        assert out.shape == (120, 4) and tgt.shape == (120,)  # all batches concatenated
        return float((out.topk(2, 1).indices == tgt[:, None]).any(1).float().mean())

    tab = evaluate_drift(m, loader, times=(1.0,), repeats=2, metric=top2, progress=False)
    assert tab.metric == "top2" and "top2" in str(tab) and "%" not in str(tab).splitlines()[0]
    acc = evaluate_drift(m, loader, times=(1.0,), repeats=2, progress=False)
    assert tab.rows[0]["mean"] >= acc.rows[0]["mean"]


def test_evaluate_drift_several_models_and_compensation():
    m, x, y = toy(InferenceRPUConfig(forward=PERFECT))
    torch.manual_seed(0)
    m_off, _, _ = toy(InferenceRPUConfig(forward=PERFECT, drift_compensation=None))
    for a, b in zip(m.analog_layers(), m_off.analog_layers()):
        b.set_weights(*a.get_weights())
    kw = dict(times=TIMES, repeats=2, progress=False)
    both = evaluate_drift({"comp": m, "none": m_off}, (x, y), **kw)
    assert both.models == ["comp", "none"] and len(both.rows) == 10
    off = evaluate_drift(m, (x, y), compensation=False, **kw)
    # compensation=False equals the same weights configured without compensation.
    assert [r["mean"] for r in off.rows] == [r["mean"] for r in both.rows if r["model"] == "none"]
    lst = evaluate_drift([m, m_off], (x, y), labels=["a", "b"], **kw)
    assert lst.models == ["a", "b"]
    assert [r["mean"] for r in lst.rows] == [r["mean"] for r in both.rows]
    assert evaluate_drift([m, m_off], (x, y), **kw).models == ["model 0", "model 1"]
    # compensation=True on a model configured without: global compensation.
    on = evaluate_drift(m_off, (x, y), compensation=True, **kw)
    assert [r["mean"] for r in on.rows] == [r["mean"] for r in both.rows if r["model"] == "comp"]
    pc = toy(InferenceRPUConfig(drift_compensation=PerColumnDriftCompensation()))
    assert evaluate_drift(pc[0], (pc[1], pc[2]), times=(ONE_YEAR,), repeats=1, progress=False).rows


def test_evaluate_drift_plot(tmp_path):
    m, x, y = toy()
    out = tmp_path / "sub" / "drift.png"
    tab = evaluate_drift({"a": m}, (x, y), times=(0.0, 1.0, ONE_YEAR), repeats=2, plot=out, progress=False)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert os.listdir(out.parent) == ["drift.png"]  # no temporary file left behind
    tab.plot(tmp_path / "again.png", title="x")
    assert (tmp_path / "again.png").exists()


def test_evaluate_drift_progress_bar(capsys):
    m, x, y = toy()
    evaluate_drift(m, (x, y), times=TIMES, repeats=3, progress=True)
    assert "evaluate_drift" in capsys.readouterr().err


def test_evaluate_drift_bad_input():
    m, x, y = toy()
    kw = dict(progress=False, repeats=1)
    for times in ((1.0, -1.0), (float("nan"),), (float("inf"),), ()):
        with pytest.raises(ValueError, match="times"):
            evaluate_drift(m, (x, y), times=times, **kw)
    with pytest.raises(TypeError, match="times"):
        evaluate_drift(m, (x, y), times=("soon",), **kw)
    for r in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="repeats"):
            evaluate_drift(m, (x, y), repeats=r, progress=False)
    with pytest.raises(ValueError, match="seed"):
        evaluate_drift(m, (x, y), seed=-1, **kw)
    # Data that does not fit the model: the layer's error, re-raised naming `data`.
    with pytest.raises(ValueError, match="data.*in_features=12") as exc:
        evaluate_drift(m, (torch.rand(5, 13), y[:5]), **kw)
    assert isinstance(exc.value.__cause__, ValueError)
    with pytest.raises(ValueError, match="data"):
        evaluate_drift(m, (x, y[:10]), **kw)
    with pytest.raises(ValueError, match="data"):
        evaluate_drift(m, [x], **kw)  # a batch that is not a pair
    with pytest.raises(ValueError, match="data"):
        evaluate_drift(m, [], **kw)
    with pytest.raises(TypeError, match="data"):
        evaluate_drift(m, x, **kw)
    with pytest.raises(TypeError, match="data"):
        evaluate_drift(m, (x.long(), y), **kw)
    with pytest.raises(TypeError, match="data"):
        evaluate_drift(m, 3, **kw)
    # Models.
    digital = nn.Sequential(nn.Linear(12, 4))
    with pytest.raises(ValueError, match="model has no InferenceRPUConfig layers"):
        evaluate_drift(digital, (x, y), **kw)
    fp = AnalogSequential(AnalogLinear(12, 4, rpu_config=FloatingPointRPUConfig()))
    with pytest.raises(ValueError, match="model has no InferenceRPUConfig layers"):
        evaluate_drift({"ok": m, "fp": fp}, (x, y), **kw)
    with pytest.raises(TypeError, match="model"):
        evaluate_drift("model", (x, y), **kw)
    with pytest.raises(ValueError, match="model"):
        evaluate_drift([], (x, y), **kw)
    with pytest.raises(ValueError, match="labels"):
        evaluate_drift([m, m], (x, y), labels=["a"], **kw)
    with pytest.raises(TypeError, match="metric"):
        evaluate_drift(m, (x, y), metric="accuracy", **kw)
    with pytest.raises(TypeError, match="compensation"):
        evaluate_drift(m, (x, y), compensation="global", **kw)
    # The model is left as it was after a failure.
    assert m.training and all(t.chip_weights is None for t in m.analog_tiles())
