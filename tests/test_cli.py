"""``aihw-export``: formats, model sources, --check, inspect, exit codes (0 / 2 usage / 1 failure)
with one-line reasons, and no partial output on failure."""

import os
import subprocess
import sys
import textwrap

import onnx
import pytest
import torch

from aihw_deploy.cli import main
from aihw_deploy.runtime import library_path


def _has_library() -> bool:
    try:
        library_path()
        return True
    except FileNotFoundError:
        return False


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """A package module with a model factory, and a state_dict for it."""
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from aihw_deploy.nn import AnalogConv2d, AnalogLinear, AnalogSequential
        from aihw_deploy.simulator.configs import InferenceRPUConfig

        def mlp():
            torch.manual_seed(0)
            return AnalogSequential(AnalogLinear(16, 8, rpu_config=InferenceRPUConfig()), nn.ReLU(),
                                    AnalogLinear(8, 3, rpu_config=InferenceRPUConfig()))

        def cnn():
            torch.manual_seed(0)
            return AnalogSequential(AnalogConv2d(1, 2, 3, rpu_config=InferenceRPUConfig()), nn.Flatten())

        def broken():
            raise RuntimeError("no model today")

        not_a_model = 3
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("mymodels")
    model = mod.mlp()
    model.program_analog_weights(seed=1)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.save(model, tmp_path / "model.pt")
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_checkpoint_and_inspect(factory, capsys):
    code, out, err = run(capsys, "model.pt", "-o", "m.onnx", "--input-shape", "2,16")
    assert code == 0, err
    assert "wrote m.onnx (onnx" in out
    model = onnx.load("m.onnx")
    assert [n.op_type for n in model.graph.node if n.domain == "ai.aihw"] == ["AnalogMatMul"] * 2
    code, out, err = run(capsys, "inspect", "m.onnx")
    assert code == 0, err
    lines = out.splitlines()
    assert "fallback functions: AnalogMatMul" in out and "inputs: input[batch,16]" in out
    header = next(i for i, line in enumerate(lines) if line.startswith("node"))
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert rows[0][:5] == ["0", "AnalogMatMul", "[batch,16]", "[8,16]", "[batch,8]"]
    assert rows[1][:5] == ["2", "AnalogMatMul", "[batch,8]", "[3,8]", "[batch,3]"]
    assert rows[0][5] == "pcm"  # programmed before saving


def test_export_factory_weights_and_options(factory, capsys):
    code, out, err = run(capsys, "mymodels:mlp", "--weights", "weights.pt", "-o", "f.onnx", "--input-shape", "1x16",
                         "--seed", "5", "--t-inference", "3600", "--opset", "18", "--no-fallback", "--static-batch")
    assert code == 0, err
    m = onnx.load("f.onnx")
    assert not m.functions and [o.version for o in m.opset_import if o.domain == ""] == [18]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    assert int(inits["seed"]) == 5 and float(inits["t_inference"]) == 3600.0
    node = next(n for n in m.graph.node if n.domain == "ai.aihw")
    assert onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "noise_model")) == b"pcm"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt,suffix", [("pt2", ".pt2"), ("torchscript", ".ts")])
def test_other_formats(factory, capsys, fmt, suffix):
    out_path = f"m{suffix}"
    code, out, err = run(capsys, "mymodels:cnn", "-o", out_path, "--input-shape", "2,1,5,5")  # format from suffix
    assert code == 0, err
    assert f"({fmt}," in out
    x = torch.rand(3, 1, 5, 5)
    loaded = torch.export.load(out_path).module() if fmt == "pt2" else torch.jit.load(out_path)
    assert loaded(x).shape == (3, 18)


@pytest.mark.skipif(not _has_library(), reason="libaihw_ort_ops.so is not installed")
def test_check_prints_deviations(factory, capsys):
    code, out, err = run(capsys, "model.pt", "-o", "c.onnx", "--input-shape", "4,16", "--check", "--seed", "3")
    assert code == 0, err
    assert "onnxruntime + op library : max |dy| = 0" in out and "ok" in out
    assert "onnxruntime fallback     : max |dy| =" in out


@pytest.mark.parametrize("argv,message", [
    (["model.pt", "-o", "x.onnx"], "--input-shape is required"),
    (["model.pt", "-o", "x.onnx", "--input-shape", "2,a"], "--input-shape"),
    (["model.pt", "-o", "x.onnx", "--input-shape", "0,16"], "--input-shape"),
    (["model.pt", "-o", "x.onnx", "--input-shape", "2,16", "--format", "tflite"], "invalid choice"),
    (["model.pt", "-o", "x.pt2", "--input-shape", "2,16", "--seed", "1"], "--seed applies to --format onnx only"),
    (["model.pt", "-o", "x.onnx", "--input-shape", "2,16", "--opset", "11"], "--opset"),
    (["model.pt", "-o", "x.onnx", "--input-shape", "2,16", "--seed", "-2"], "--seed"),
    (["model.pt", "--input-shape", "2,16"], "-o/--output"),
    (["model.pt", "-o", ".", "--input-shape", "2,16"], "is a folder"),
])
def test_usage_errors_exit_2(factory, capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and err.strip().splitlines()[-1].startswith("aihw-export: error:")
    assert not os.path.exists("x.onnx") and not os.path.exists("x.pt2")


@pytest.mark.parametrize("argv,message", [
    (["nothere.pt", "-o", "x.onnx", "--input-shape", "2,16"], "no such file"),
    (["corrupt.pt", "-o", "x.onnx", "--input-shape", "2,16"], "cannot load 'corrupt.pt'"),
    (["weights.pt", "-o", "x.onnx", "--input-shape", "2,16"], "holds a state_dict"),
    (["nomodule:mlp", "-o", "x.onnx", "--input-shape", "2,16"], "cannot import 'nomodule'"),
    (["mymodels:broken", "-o", "x.onnx", "--input-shape", "2,16"], "no model today"),
    (["mymodels:not_a_model", "-o", "x.onnx", "--input-shape", "2,16"], "no callable 'not_a_model'"),
    (["mymodels:cnn", "--weights", "weights.pt", "-o", "x.onnx", "--input-shape", "2,16"], "weights do not fit"),
    (["model.pt", "-o", "x.onnx", "--input-shape", "2,15"], "export failed"),
    (["model.pt", "-o", "nofolder/x.onnx", "--input-shape", "2,16"], "does not exist"),
    (["inspect", "nothere.onnx"], "no such file"),
    (["inspect", "corrupt.pt"], "not an ONNX model"),
])
def test_failures_exit_1_with_one_line(factory, capsys, argv, message):
    (factory / "corrupt.pt").write_bytes(b"\x00garbage" * 50)
    code, out, err = run(capsys, *argv)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aihw-export: error:") and message in lines[0], err
    assert not os.path.exists("x.onnx")
    assert not [f for f in os.listdir(".") if ".part" in f]


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "aihw-export")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "aihw_deploy.cli"]
    r = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--input-shape" in r.stdout
    r = subprocess.run(cmd + ["model.pt"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "-o/--output" in r.stderr
