"""ONNX export: onnxruntime with the op library equals PyTorch's eval output (same seeds, noise
on), a stock onnxruntime runs the deterministic fallback functions and equals PyTorch with noise
off, digital layers are standard ONNX, and failures are clear and leave no file behind.

Tolerance: 1e-5 of the output scale (max |y|).  With the library both hosts run the same
rpucuda code on the same generator positions, so outputs agree to float rounding.  The fallback
runs the pipeline in standard ONNX ops; only the matrix product's summation order differs
(MLAS vs OpenBLAS), which can move a value across an ADC rounding boundary with a probability
of about 1e-5 per output; the fixed inputs here do not hit one.  The same holds for digital
layers between analog ones whose onnxruntime and torch kernels differ in the last bit (tanh:
~60% of values differ by 1-2 ulp): the next layer's DAC may then round an input differently.
Models with such layers (LeNet's tanh) are compared output by output with that allowance.
"""

import json
import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from aihw_deploy.export import ExportError, fallback_model, reference_model, to_onnx
from aihw_deploy.nn import AnalogConv1d, AnalogConv2d, AnalogConv3d, AnalogLinear, AnalogSequential
from aihw_deploy.runtime import InferenceSession, library_path
from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.configs import (BoundManagementType, FloatingPointRPUConfig, InferenceRPUConfig,
                                           IOParameters, MappingParameter, NoiseManagementType,
                                           PerColumnDriftCompensation, SingleRPUConfig, WeightModifierParameter,
                                           WeightModifierType, WeightNoiseType, WeightRemapParameter,
                                           WeightRemapType)


def _has_library() -> bool:
    try:
        library_path()
        return True
    except FileNotFoundError:
        return False


needs_library = pytest.mark.skipif(not _has_library(), reason="libaihw_ort_ops.so is not installed "
                                   "(pip install the project with AIHW_BUILD_ORT_OPS=ON, the default)")

NOISY = IOParameters(w_noise=0.02, w_noise_type=WeightNoiseType.PCM_READ, inp_noise=0.01)  # and out_noise 0.06
QUIET = IOParameters(out_noise=0.0, inp_noise=0.0, w_noise=0.0)


def assert_close(y, ref, rel=1e-5):
    y, ref = np.asarray(y), np.asarray(ref)
    assert y.shape == ref.shape
    scale = max(float(np.abs(ref).max()), 1e-12)
    err = float(np.abs(y - ref).max())
    assert err <= rel * scale, f"max |dy| = {err:.3g} > {rel:g} * max |y| ({scale:.3g})"


def assert_close_but_rounding(y, ref, rel=1e-5, max_fraction=2e-3):
    """Like assert_close for all but a few outputs (at most ``max_fraction``) that a last-bit
    difference of a digital layer moved across a DAC/ADC rounding boundary."""
    y, ref = np.asarray(y), np.asarray(ref)
    scale = max(float(np.abs(ref).max()), 1e-12)
    off = np.abs(y - ref) > rel * scale
    assert off.mean() <= max_fraction, f"{off.sum()} of {off.size} outputs differ by more than {rel:g} * max |y|"


def torch_out(model, x):
    with torch.no_grad():
        return model(x).numpy()


def cfg(io=NOISY, **kw):
    return InferenceRPUConfig(forward=io, **kw)


def models(io):
    """name -> (model, input shape): the layer kinds of the contract."""
    torch.manual_seed(11)
    tiled = MappingParameter(max_input_size=24, max_output_size=7)
    return {
        "linear": (AnalogSequential(AnalogLinear(30, 12, rpu_config=cfg(io))), (5, 30)),
        "linear_tiled": (AnalogSequential(AnalogLinear(70, 20, rpu_config=cfg(io, mapping=tiled)), nn.ReLU(),
                                          AnalogLinear(20, 9, bias=False, rpu_config=cfg(io, mapping=tiled))), (4, 70)),
        "conv1d": (AnalogSequential(AnalogConv1d(3, 8, 3, stride=2, padding=1, rpu_config=cfg(io))), (3, 3, 13)),
        "conv2d": (AnalogSequential(AnalogConv2d(4, 6, 3, padding=1, dilation=2, groups=2,
                                                 rpu_config=cfg(io, mapping=tiled)), nn.ReLU(),
                                    AnalogConv2d(6, 5, 2, stride=2, rpu_config=cfg(io))), (2, 4, 9, 9)),
        "conv3d": (AnalogSequential(AnalogConv3d(2, 3, 2, padding=1, rpu_config=cfg(io))), (2, 2, 3, 4, 4)),
    }


def _export(model, shape, tmp_path, **kw):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    path = to_onnx(model, x, tmp_path / "model.onnx", **kw)
    return path, x


# -- with the op library: the kernels compute what PyTorch computes ------------------------------------------
@needs_library
@pytest.mark.parametrize("name", list(models(NOISY)))
@pytest.mark.parametrize("programmed", [False, True])
def test_library_equals_pytorch_noise_on(name, programmed, tmp_path):
    model, shape = models(NOISY)[name]
    model.eval()
    if programmed:
        model.program_analog_weights(seed=4)
        model.drift_analog_weights(86400.0)
    path, x = _export(model, shape, tmp_path)
    sess = InferenceSession(path)
    outs = []
    for i in range(3):  # consecutive runs continue the tiles' call counters alike
        xi = x if i != 1 else torch.rand(shape[0] + 2, *shape[1:])  # and any batch size
        ref = torch_out(model, xi)
        y = sess(xi)
        assert_close(y, ref)
        outs.append(y)
    assert not np.array_equal(outs[0], outs[2])  # fresh noise per call


@needs_library
def test_library_single_config_remap_analog_bias_per_column(tmp_path):
    torch.manual_seed(5)
    remap = cfg(remap=WeightRemapParameter(type=WeightRemapType.CHANNELWISE_SYMMETRIC),
                drift_compensation=PerColumnDriftCompensation())
    model = AnalogSequential(AnalogLinear(16, 12, rpu_config=remap), nn.ReLU(),
                             AnalogLinear(12, 8, rpu_config=cfg(mapping=MappingParameter(digital_bias=False))),
                             nn.ReLU(), AnalogLinear(8, 4, rpu_config=SingleRPUConfig(forward=NOISY)))
    for t in model[0]._tiles:
        t.out_scaling = torch.rand(t.out_size) + 0.5
    model.eval()
    model.program_analog_weights(seed=9)
    model.drift_analog_weights(3600.0)
    path, x = _export(model, (6, 16), tmp_path)
    sess = InferenceSession(path)
    for _ in range(2):
        assert_close(sess(x), torch_out(model, x))


@needs_library
def test_seed_and_t_inference_inputs(tmp_path):
    model, shape = models(NOISY)["conv2d"]
    model.eval()
    model.program_analog_weights(seed=2)
    path, x = _export(model, shape, tmp_path, seed=17)
    a, b = InferenceSession(path)(x), InferenceSession(path)(x)
    assert np.array_equal(a, b)  # seeded: reproducible across runs and sessions
    assert_close(a, torch_out(reference_model(model, seed=17), x))
    c = InferenceSession(path, seed=18)(x)
    assert not np.array_equal(a, c)
    later = InferenceSession(path, seed=17, t_inference=31536000.0)(x)
    assert_close(later, torch_out(reference_model(model, seed=17, t_inference=31536000.0), x))
    assert not np.allclose(later, a)
    # t_inference given at export time overrides the tiles' time.
    path2 = to_onnx(model, x, tmp_path / "later.onnx", t_inference=31536000.0, seed=17)
    assert np.array_equal(InferenceSession(path2)(x), later)


# -- without the library: the fallback functions -----------------------------------------------------------
@pytest.mark.parametrize("name", list(models(QUIET)))
def test_fallback_equals_pytorch_noise_off(name, tmp_path):
    model, shape = models(QUIET)[name]
    model.eval()
    path, x = _export(model, shape, tmp_path)
    sess = InferenceSession(path, use_library=False)
    ref = torch_out(model, x)
    assert_close(sess(x), ref)
    assert_close(sess(x), ref)  # deterministic


@pytest.mark.parametrize("io", [
    dict(noise_management=NoiseManagementType.MAX, bound_management=BoundManagementType.ITERATIVE, out_bound=2.0),
    dict(noise_management=NoiseManagementType.AVERAGE_ABS_MAX, nm_thres=0.8),
    dict(noise_management=NoiseManagementType.CONSTANT, nm_thres=2.0, bound_management=BoundManagementType.NONE),
    dict(noise_management=NoiseManagementType.NONE, inp_res=0.0, out_res=0.0, out_scale=1.5),
    dict(bound_management=BoundManagementType.ITERATIVE_WORST_CASE, out_bound=1.5, max_bm_factor=8.0),
    dict(inp_res=255.0, out_res=1023.0, inp_bound=0.5, out_bound=0.0),
    dict(is_perfect=True, out_scale=2.0),
], ids=["max_bm", "avg_abs_max", "constant", "no_nm_unquantized", "worst_case", "steps", "perfect"])
def test_fallback_function_equals_io_mvm(io):
    """The function body against rpucuda's io_mvm with the same parameters (noise off)."""
    params = IOParameters(out_noise=0.0, **io)
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (14, 45)).astype(np.float32)
    x = rng.standard_normal((9, 45)).astype(np.float32)
    x[2] = 0.0  # a zero row gives zero output
    from aihw_deploy.export import io_attributes

    attrs = io_attributes(params)
    attrs.update(max_input_size=16, max_output_size=6)
    model = fallback_model(w, **attrs)
    onnx.checker.check_model(model, full_check=True)
    import onnxruntime as ort

    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    ref = np.zeros((9, 14), np.float32)
    rpu_base.tiles.io_mvm(w, x, ref, io=params.as_bindings(),
                          mapping=MappingParameter(max_input_size=16, max_output_size=6).as_bindings())
    assert_close(y, ref)
    assert np.all(y[2] == 0)


def test_digital_layers_are_standard_onnx(tmp_path):
    torch.manual_seed(1)
    model = AnalogSequential(AnalogConv2d(2, 4, 3, rpu_config=FloatingPointRPUConfig()), nn.ReLU(), nn.Flatten(),
                             AnalogLinear(36, 5, rpu_config=FloatingPointRPUConfig()), nn.Linear(5, 3))
    path, x = _export(model, (3, 2, 5, 5), tmp_path)
    m = onnx.load(path)
    assert not any(n.domain == "ai.aihw" for n in m.graph.node) and not m.functions
    assert {"Conv"} <= {n.op_type for n in m.graph.node} and {"Gemm", "MatMul"} & {n.op_type for n in m.graph.node}
    assert_close(InferenceSession(path, use_library=False)(x), torch_out(model, x))


def test_model_structure_metadata_and_names(tmp_path):
    model, shape = models(NOISY)["conv2d"]
    model.eval()
    model.program_analog_weights(seed=1)
    path, _ = _export(model, shape, tmp_path)
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    nodes = [n for n in m.graph.node if n.domain == "ai.aihw"]
    assert [(n.name, n.op_type) for n in nodes] == [("0", "AnalogConv"), ("2", "AnalogConv")]
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    assert inits["0.weight"] == [6, 2, 3, 3] and inits["2.weight"] == [5, 6, 2, 2]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["noise_model"] == b"pcm" and attrs["group"] == 2 and attrs["pads"] == [1, 1, 1, 1]
    assert attrs["dilations"] == [2, 2] and attrs["max_input_size"] == 24 and len(attrs["seeds"]) == 2
    assert attrs["seeds"] == [t.seed for t in model[0]._tiles]
    assert attrs["program_seeds"] == [t.program_seed for t in model[0]._tiles]
    assert attrs["w_noise_type"] == b"pcm_read" and attrs["noise_management"] == b"abs_max"
    assert [f.name for f in m.functions] == ["AnalogConv"] and m.functions[0].domain == "ai.aihw"
    assert [i.name for i in m.graph.input] == ["input", "seed", "t_inference"]
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["aihw_deploy.version"] == "0.1.0" and meta["aihw_deploy.fallback"] == "true"
    layers = json.loads(meta["aihw_deploy.analog_layers"])
    assert layers["0"]["op"] == "AnalogConv" and layers["0"]["config"] == "InferenceRPUConfig"
    assert json.loads(meta["aihw_deploy.rpu_config.2"])["__class__"] == "InferenceRPUConfig"
    # The tiles' call counters are where they were; the model is back in its mode.
    assert all(t.call == 0 for t in model.analog_tiles()) and not model.training


def test_no_fallback_needs_the_library(tmp_path):
    model, shape = models(QUIET)["linear"]
    path, x = _export(model, shape, tmp_path, fallback=False)
    assert not onnx.load(path).functions
    with pytest.raises(RuntimeError, match="cannot load"):
        InferenceSession(path, use_library=False)


# -- errors ------------------------------------------------------------------------------------------------
def test_export_errors_leave_no_file(tmp_path):
    bad = AnalogSequential(AnalogLinear(4, 3, rpu_config=cfg(modifier=WeightModifierParameter(
        type=WeightModifierType.ADD_NORMAL, std_dev=0.1, enable_during_test=True))))
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="layer '0'.*enable_during_test"):
        to_onnx(bad, torch.rand(2, 4), out)
    conv = AnalogSequential(AnalogConv2d(1, 2, 2, rpu_config=cfg(mapping=MappingParameter(digital_bias=False))))
    with pytest.raises(ExportError, match="analog bias"):
        to_onnx(conv, torch.rand(1, 1, 4, 4), out)
    out.write_bytes(b"keep")  # an existing file survives a failed export
    with pytest.raises(ExportError, match="torch.onnx.export failed"):
        to_onnx(AnalogSequential(AnalogLinear(4, 3, rpu_config=cfg())), torch.rand(2, 5), out)
    assert out.read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_export_argument_errors(tmp_path):
    model = AnalogLinear(4, 3, rpu_config=cfg())
    with pytest.raises(TypeError, match="nn.Module"):
        to_onnx(object(), torch.rand(1, 4), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="float32"):
        to_onnx(model, torch.rand(1, 4).double(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset"):
        to_onnx(model, torch.rand(1, 4), tmp_path / "m.onnx", opset=13)
    with pytest.raises(ValueError, match="t_inference"):
        to_onnx(model, torch.rand(1, 4), tmp_path / "m.onnx", t_inference=-1.0)
    with pytest.raises(ExportError, match="does not exist"):
        to_onnx(model, torch.rand(1, 4), tmp_path / "missing" / "m.onnx")
    assert not os.listdir(tmp_path)


def test_runtime_bad_inputs_and_files(tmp_path, monkeypatch):
    model, shape = models(QUIET)["linear"]
    path, x = _export(model, shape, tmp_path)
    sess = InferenceSession(path, use_library=False)
    with pytest.raises(Exception, match="(?i)dimension|shape|rank"):
        sess(np.zeros((2, 29), np.float32))  # wrong size
    with pytest.raises(Exception, match="(?i)rank|dimension"):
        sess(np.zeros((2, 3, 30), np.float32))  # wrong rank
    with pytest.raises(ValueError, match="expected 1 input"):
        sess(x, x)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not an onnx model" * 10)
    with pytest.raises(RuntimeError, match="cannot load"):
        InferenceSession(corrupt, use_library=False)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        InferenceSession(tmp_path / "nope.onnx", use_library=False)
    with pytest.raises(ValueError, match="no 't_inference' input"):  # unprogrammed: no t_inference input
        InferenceSession(path, use_library=False, t_inference=1.0)
    # Library missing: a clear FileNotFoundError.
    monkeypatch.setenv("AIHW_ORT_OPS_LIBRARY", str(tmp_path / "libnone.so"))
    with pytest.raises(FileNotFoundError, match="AIHW_ORT_OPS_LIBRARY"):
        library_path()
    with pytest.raises(FileNotFoundError):
        InferenceSession(path)
    monkeypatch.delenv("AIHW_ORT_OPS_LIBRARY")
    import aihw_deploy.runtime as rt

    monkeypatch.setattr(rt, "_candidates", lambda: [tmp_path / "lib" / "libaihw_ort_ops.so"])
    with pytest.raises(FileNotFoundError, match="not found"):
        library_path()


@needs_library
def test_library_rejects_nan_input(tmp_path):
    model, shape = models(NOISY)["linear"]
    path, x = _export(model, shape, tmp_path)
    x = x.numpy().copy()
    x[0, 0] = np.nan
    try:
        y = InferenceSession(path)(x)
    except Exception as exc:  # the kernel may reject NaN
        assert "nan" in str(exc).lower() or "finite" in str(exc).lower()
    else:  # or propagate it to that row only (the IO pipeline's NaN rule)
        assert np.isnan(y[0]).all() and np.isfinite(y[1:]).all()


# -- digits models ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_models():
    pytest.importorskip("sklearn")
    from aihw_deploy.examples.digits import build_lenet, build_mlp, load_digits_split, train

    data = load_digits_split()
    out = {}
    for name, build, epochs in (("mlp", build_mlp, 15), ("lenet", build_lenet, 4)):
        torch.manual_seed(0)
        m = build(InferenceRPUConfig())
        train(m, data[0], data[1], epochs=epochs)
        m.eval()
        out[name] = m
    return out, data


@pytest.mark.parametrize("name", ["mlp", "lenet"])
@pytest.mark.parametrize("programmed", [False, True])
def test_digits_accuracy_onnxruntime_equals_pytorch(name, programmed, digits_models, tmp_path):
    import copy

    models_, (_, _, xte, yte) = digits_models
    model = copy.deepcopy(models_[name])
    if programmed:
        model.program_analog_weights(seed=0)
        model.drift_analog_weights(86400.0)
    path = to_onnx(model, xte[:8], tmp_path / f"{name}.onnx")
    y_torch = torch_out(model, xte)
    acc_torch = float((y_torch.argmax(1) == yte.numpy()).mean())
    fb = InferenceSession(path, use_library=False)(xte)
    acc_fb = float((fb.argmax(1) == yte.numpy()).mean())
    assert acc_torch > 0.8
    # The fallback is the same network without noise: its accuracy is at least about as good.
    assert acc_fb >= acc_torch - 0.03, (acc_fb, acc_torch)
    if _has_library():
        y = InferenceSession(path)(xte)
        if name == "mlp":  # ReLU is exact in both hosts: every output agrees
            assert_close(y, y_torch)
        else:  # tanh differs in the last bit between onnxruntime and torch
            assert_close_but_rounding(y, y_torch)
        assert abs(float((y.argmax(1) == yte.numpy()).mean()) - acc_torch) <= 1.0 / len(yte)


def test_demo_prints_onnxruntime_accuracies_side_by_side(capsys):
    pytest.importorskip("sklearn")
    from aihw_deploy.examples.demo import main as demo

    assert demo(["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    head = out.index("onnxruntime + aihw ops")
    rows = [line.split() for line in out[head:].splitlines()[1:5]]
    assert [r[0] + " " + r[1] for r in rows] == ["1 second", "1 hour", "1 day", "1 year"]
    for r in rows:
        if _has_library():
            assert r[2] == r[3]  # same chip, same noise: the same accuracy
        assert r[4] == rows[0][4]  # the fallback does not drift
