"""The onnxruntime CUDA execution-provider kernels of ai.aihw::AnalogMatMul / AnalogConv
(ort_ops/analog_ops.cpp, built with CUDA) against the CPU kernels, output by output.

Two parts:

* Host emulation (runs everywhere with a C++ compiler): the per-element functions of the CUDA
  layout kernels (rpucuda/cuda/im2col_kernels.h: im2col, the scatter to [N, M, L] with the bias,
  the NaN/Inf check) are played on the host by tests/cpp/ort_cuda_layout_emulation.cpp and
  compared bit for bit with aihw_deploy.nn.modules.conv.im2col and numpy.

* CUDA EP vs CPU EP (marked ``cuda``; needs onnxruntime-gpu, a GPU and a library built with
  CUDA): exported models run in two sessions of the same library, one per execution provider,
  with the same seeds and the same sequence of runs.  Both sessions program the same chip (same
  Philox streams for programming noise, drift exponents and read noise) and draw the same
  per-call noise, so the outputs differ only through float rounding: the dense products are
  summed in another order on the GPU (cuBLAS vs rpucuda's analog_gemm), the device's powf/expf/
  logf may differ in the last bit in programming and drift, and alpha follows from those
  products.  Each of these is ~1e-7 relative before the ADC.  The ADC then rounds to a step of
  out_res * 2 * out_bound (1/255 of the range): an output agrees exactly (to ~1e-7 of its scale,
  from the digital rescaling) unless its analog value lay within rounding of a step boundary,
  where it lands one ADC step away.  That happens with probability ~|y| * 1e-7 / step ~ 1e-5 per
  output (and can carry into the next layer's DAC for the same row).  So: all outputs agree to
  1e-5 of the output scale except at most 0.5% of them (at least 2 allowed), and those by at most
  a tenth of the scale (one ADC step in output units is a few percent of it at most).  A wrong
  seed, call index, chip or layout would move nearly every output by the noise amplitude (a few
  percent of the scale), far beyond this allowance.  A profile of the CUDA session shows that
  the custom nodes ran on the CUDA execution provider, not on the CPU EP or the fallback
  functions.
"""

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from aihw_deploy.nn import AnalogConv2d, AnalogLinear, AnalogSequential
from aihw_deploy.nn.modules.conv import im2col as torch_im2col
from aihw_deploy.simulator.configs import InferenceRPUConfig, IOParameters, MappingParameter, WeightNoiseType

from conftest import ort_library

ROOT = Path(__file__).resolve().parents[1]
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
CUSTOM_OPS = ("AnalogMatMul", "AnalogConv")


# --------------------------------------------------------------------------- host emulation


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The host-emulation program of the layout kernels, compiled with the system C++ compiler."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("no C++ compiler (g++/c++/clang++) for the host emulation of the CUDA layout kernels")
    exe = tmp_path_factory.mktemp("ort_cuda_emulation") / "ort_cuda_layout_emulation"
    src = ROOT / "tests" / "cpp" / "ort_cuda_layout_emulation.cpp"
    p = subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", f"-I{ROOT / 'rpucuda'}", f"-I{ROOT / 'rpucuda' / 'cuda'}",
                        str(src), "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"compiling {src.name} failed:\n{p.stderr[-4000:]}"
    return exe


def _run(exe, *args):
    p = subprocess.run([str(exe)] + [str(a) for a in args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _write(path, a):
    np.ascontiguousarray(a, dtype=np.float32).tofile(path)
    return path


# (N, C, group, spatial size, kernel, stride, padding, dilation)
IM2COL_CASES = [
    (2, 3, 1, (13,), (3,), (2,), (1,), (1,)),
    (2, 4, 2, (9, 9), (3, 3), (1, 1), (1, 1), (2, 2)),
    (3, 6, 3, (7, 8), (2, 3), (2, 1), (0, 2), (1, 1)),
    (2, 2, 1, (3, 4, 4), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    (1, 4, 2, (5, 6, 7), (3, 1, 2), (2, 1, 3), (1, 0, 1), (1, 1, 2)),
]


@pytest.mark.parametrize("case", IM2COL_CASES, ids=lambda c: f"{len(c[3])}d-g{c[2]}")
def test_im2col_kernel_host_emulation(emulator, case, tmp_path):
    """Every group's unfolded input equals aihw_deploy's im2col (torch unfold) bit for bit."""
    N, C, G, S, K, st, pd, dl = case
    d = len(S)
    x = np.random.default_rng(3).normal(size=(N, C) + S).astype(np.float32)
    pad3 = lambda v, fill: (fill,) * (3 - d) + tuple(v)  # noqa: E731
    Cg = C // G
    for g in range(G):
        ref, L = torch_im2col(torch.from_numpy(x[:, g * Cg:(g + 1) * Cg]), K, st, pd, dl)
        xf, out = _write(tmp_path / "x.bin", x), tmp_path / "cols.bin"
        _run(emulator, "im2col", N, C, g * Cg, Cg, *pad3(S, 1), *pad3(K, 1), *pad3(st, 1), *pad3(pd, 0),
             *pad3(dl, 1), *pad3(L, 1), xf, out)
        cols = np.fromfile(out, dtype=np.float32).reshape(ref.shape)
        assert np.array_equal(cols, ref.numpy()), f"group {g}: im2col differs from aihw_deploy's"


@pytest.mark.parametrize("bias", [True, False])
def test_rows_to_channels_kernel_host_emulation(emulator, bias, tmp_path):
    """Group g's rows [N*L, Mg] land in Y[:, g*Mg:(g+1)*Mg, :] plus the bias; other channels untouched."""
    rng = np.random.default_rng(5)
    N, L, Mg, G = 3, 7, 4, 3
    M = Mg * G
    b = rng.normal(size=M).astype(np.float32)
    y0 = rng.normal(size=(N, M, L)).astype(np.float32)
    for g in range(G):
        rows = rng.normal(size=(N * L, Mg)).astype(np.float32)
        rows[0, 0] = -0.0  # -0 + 0.0f = +0, as in the CPU adapter
        yf = _write(tmp_path / "y.bin", y0)
        _run(emulator, "rows_to_channels", N, L, Mg, M, g * Mg, _write(tmp_path / "rows.bin", rows),
             _write(tmp_path / "b.bin", b) if bias else "-", yf)
        y = np.fromfile(yf, dtype=np.float32).reshape(N, M, L)
        ref = y0.copy()
        ref[:, g * Mg:(g + 1) * Mg, :] = rows.reshape(N, L, Mg).transpose(0, 2, 1) + (
            b[g * Mg:(g + 1) * Mg, None] if bias else np.float32(0.0))
        assert np.array_equal(y.view(np.uint32), ref.view(np.uint32))


def test_nonfinite_check_host_emulation(emulator, tmp_path):
    x = np.linspace(-3, 3, 1000, dtype=np.float32)
    cases = {0: x, 1: np.where(np.arange(1000) == 500, np.nan, x), 2: np.where(np.arange(1000) == 7, -np.inf, x)}
    both = x.copy()
    both[3], both[900] = np.inf, np.nan
    cases[3] = both  # NaN wins, as in the CPU kernel's message
    for key, a in cases.items():
        expect = {0: 0, 1: 1, 2: 2, 3: 1}[key]
        got = int(_run(emulator, "nonfinite", _write(tmp_path / "x.bin", a)))
        assert got == expect, (key, got)
    big = np.full(8, np.float32(3.4e38), dtype=np.float32)  # finite extremes are finite
    assert int(_run(emulator, "nonfinite", _write(tmp_path / "x.bin", big))) == 0


# --------------------------------------------------------------------------- CUDA EP vs CPU EP


def _cuda_ep_unavailable():
    """Why the CUDA EP tests cannot run here, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if CUDA_EP not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no {CUDA_EP} (install onnxruntime-gpu)"
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    lib = ort_library()
    if lib is None:
        return "libaihw_ort_ops.so is not installed"
    if CUDA_EP.encode() not in Path(lib).read_bytes():
        return f"{lib} was built without CUDA (no CUDA EP kernels); build with AIHW_WITH_CUDA=ON"
    return None


_WHY_NOT = _cuda_ep_unavailable()
needs_cuda_ep = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))

NOISY = IOParameters(w_noise=0.02, w_noise_type=WeightNoiseType.PCM_READ, inp_noise=0.01)  # and out_noise 0.06


def cfg(**kw):
    return InferenceRPUConfig(forward=NOISY, **kw)


def models():
    """name -> (model, input shape): the exported Linear, tiled Linear and Conv2d models."""
    torch.manual_seed(11)
    tiled = MappingParameter(max_input_size=24, max_output_size=7)
    return {
        "linear": (AnalogSequential(AnalogLinear(30, 12, rpu_config=cfg())), (5, 30)),
        "linear_tiled": (AnalogSequential(AnalogLinear(70, 20, rpu_config=cfg(mapping=tiled)), nn.ReLU(),
                                          AnalogLinear(20, 9, bias=False, rpu_config=cfg(mapping=tiled))), (4, 70)),
        "conv2d": (AnalogSequential(AnalogConv2d(4, 6, 3, padding=1, dilation=2, groups=2,
                                                 rpu_config=cfg(mapping=tiled)), nn.ReLU(),
                                    AnalogConv2d(6, 5, 2, stride=2, rpu_config=cfg())), (2, 4, 9, 9)),
    }


def assert_parity(y_cuda, y_cpu, rel=1e-5, max_fraction=5e-3, max_off=0.1):
    """CUDA EP output = CPU EP output up to float rounding, but for a few outputs one ADC step
    apart (module docstring)."""
    y_cuda, y_cpu = np.asarray(y_cuda), np.asarray(y_cpu)
    assert y_cuda.shape == y_cpu.shape, (y_cuda.shape, y_cpu.shape)
    assert np.isfinite(y_cuda).all()
    scale = max(float(np.abs(y_cpu).max()), 1e-12)
    diff = np.abs(y_cuda.astype(np.float64) - y_cpu)
    off = diff > rel * scale
    allowed = max(2, math.floor(max_fraction * y_cpu.size))
    assert off.sum() <= allowed, (f"{off.sum()} of {y_cpu.size} outputs differ by more than {rel:g} x max|y| "
                                  f"({scale:.3g}); at most {allowed} may (ADC rounding)")
    assert float(diff.max()) <= max_off * scale, f"max |dy| = {diff.max():.3g} > {max_off} x max|y| ({scale:.3g})"


def _sessions(path, tmp_path, **kw):
    """(CPU EP session, CUDA EP session with profiling) of one model, the library registered in both."""
    import onnxruntime as ort

    from aihw_deploy.runtime import InferenceSession

    cpu = InferenceSession(path, providers=[CPU_EP], **kw)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "cuda_profile")
    gpu = InferenceSession(path, providers=[CUDA_EP, CPU_EP], sess_options=so, **kw)
    if gpu.session.get_providers()[0] != CUDA_EP:
        pytest.skip(f"the CUDA EP did not initialize (providers {gpu.session.get_providers()}): CUDA/cuDNN libraries?")
    return cpu, gpu


def assert_ran_on_cuda(gpu):
    """The custom nodes of the session ran on the CUDA EP (its profile), none on the CPU EP or inlined."""
    profile = gpu.session.end_profiling()
    events = json.loads(Path(profile).read_text())
    providers = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") == "Node" and args.get("op_name") in CUSTOM_OPS:
            providers.setdefault(e["name"].split("_kernel_time")[0], set()).add(args.get("provider"))
    assert providers, f"no {'/'.join(CUSTOM_OPS)} node in the profile {profile} (fallback functions inlined?)"
    for node, ps in providers.items():
        assert ps == {CUDA_EP}, f"node {node} ran on {sorted(map(str, ps))}"


@pytest.mark.cuda
@needs_cuda_ep
@pytest.mark.parametrize("name", list(models()))
@pytest.mark.parametrize("programmed", [False, True])
def test_cuda_ep_equals_cpu_ep(name, programmed, tmp_path):
    from aihw_deploy.export import to_onnx

    model, shape = models()[name]
    model.eval()
    if programmed:
        model.program_analog_weights(seed=4)
        model.drift_analog_weights(86400.0)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    path = to_onnx(model, x, tmp_path / "model.onnx")
    cpu, gpu = _sessions(path, tmp_path)
    outs = []
    for i in range(3):  # consecutive runs continue the tiles' call counters alike on both EPs
        xi = x if i != 1 else torch.rand(shape[0] + 3, *shape[1:], generator=torch.Generator().manual_seed(2))
        y_cpu, y_gpu = cpu(xi), gpu(xi)
        assert_parity(y_gpu, y_cpu)
        outs.append(y_gpu)
    assert not np.array_equal(outs[0], outs[2])  # fresh noise per call on the GPU too
    assert_ran_on_cuda(gpu)


@pytest.mark.cuda
@needs_cuda_ep
def test_cuda_ep_seed_and_t_inference(tmp_path):
    """Seeded runs and several t_inference values (more than the device's chip cache holds)."""
    from aihw_deploy.export import to_onnx

    model, shape = models()["conv2d"]
    model.eval()
    model.program_analog_weights(seed=2)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    path = to_onnx(model, x, tmp_path / "model.onnx", seed=17)
    cpu, gpu = _sessions(path, tmp_path)
    feed = {cpu.input_names[0]: x.numpy()}
    for t in (0.0, 3600.0, 31536000.0, 86400.0, 0.0, 3600.0):
        for seed in (17, 18):
            extra = {"seed": np.array(seed, np.int64), "t_inference": np.array(t, np.float32)}
            y_cpu = cpu.run(None, {**feed, **extra})[0]
            y_gpu = gpu.run(None, {**feed, **extra})[0]
            assert_parity(y_gpu, y_cpu)
            assert np.array_equal(y_gpu, gpu.run(None, {**feed, **extra})[0])  # seeded: reproducible
    assert_ran_on_cuda(gpu)


@pytest.fixture(scope="module")
def digits_mlp():
    pytest.importorskip("sklearn")
    from aihw_deploy.examples.digits import build_mlp, load_digits_split, train

    data = load_digits_split()
    torch.manual_seed(0)
    m = build_mlp(InferenceRPUConfig())
    train(m, data[0], data[1], epochs=15)
    m.eval()
    return m, data


@pytest.mark.cuda
@needs_cuda_ep
@pytest.mark.parametrize("programmed", [False, True])
def test_cuda_ep_digits_mlp(programmed, digits_mlp, tmp_path):
    import copy

    from aihw_deploy.export import to_onnx

    base, (_, _, xte, yte) = digits_mlp
    model = copy.deepcopy(base)
    if programmed:
        model.program_analog_weights(seed=0)
        model.drift_analog_weights(86400.0)
    path = to_onnx(model, xte[:8], tmp_path / "mlp.onnx")
    cpu, gpu = _sessions(path, tmp_path)
    y_cpu, y_gpu = cpu(xte), gpu(xte)
    assert_parity(y_gpu, y_cpu)
    acc = lambda y: float((y.argmax(1) == yte.numpy()).mean())  # noqa: E731
    assert acc(y_cpu) > 0.8
    assert abs(acc(y_gpu) - acc(y_cpu)) <= 1.0 / len(yte)
    assert_ran_on_cuda(gpu)


def _tiny_model(op, inputs, inits, attrs, x_type=None):
    """One custom node reading graph inputs X (and W when not an initializer)."""
    from onnx import TensorProto, helper

    node = helper.make_node(op, list(inputs), ["Y"], domain="ai.aihw", name=f"{op.lower()}_0", **attrs)
    names = {t.name for t in inits}
    graph_inputs = [helper.make_tensor_value_info(n, x_type or TensorProto.FLOAT, None)
                    for n in inputs if n and n not in names]
    g = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.aihw", 1)])
    m.ir_version = 8
    return m.SerializeToString()


def _raw_sessions(model_bytes, tmp_path):
    import onnxruntime as ort

    out = []
    for providers in ([CPU_EP], [CUDA_EP, CPU_EP]):
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.register_custom_ops_library(ort_library())
        if providers[0] == CUDA_EP:
            so.enable_profiling = True
            so.profile_file_prefix = str(tmp_path / "cuda_profile")
        out.append(ort.InferenceSession(model_bytes, so, providers=providers))
    return out


@pytest.mark.cuda
@needs_cuda_ep
def test_cuda_ep_weights_as_graph_input_reprogrammed_when_they_change(tmp_path):
    """A non-constant W: programmed at the first run, again whenever W changes (pcm, compensation)."""
    rng = np.random.default_rng(9)
    attrs = dict(noise_model="pcm", drift_compensation="per_column", t_inference=3600.0, out_noise=0.05,
                 seeds=[21], call_offsets=[0], program_seeds=[5])
    cpu, gpu = _raw_sessions(_tiny_model("AnalogMatMul", ["X", "W"], [], attrs), tmp_path)
    x = rng.normal(size=(6, 40)).astype(np.float32)
    w1, w2 = (rng.uniform(-0.5, 0.5, size=(10, 40)).astype(np.float32) for _ in range(2))
    for w in (w1, w2, w1, w1):
        assert_parity(gpu.run(None, {"X": x, "W": w})[0], cpu.run(None, {"X": x, "W": w})[0])


def _error(fn):
    with pytest.raises(Exception) as ei:
        fn()
    return str(ei.value)


@pytest.mark.cuda
@needs_cuda_ep
def test_cuda_ep_errors_match_cpu_ep(tmp_path):
    """Wrong shapes and NaN/Inf inputs fail with the CPU kernel's message; non-float X fails at load."""
    from onnx import TensorProto, numpy_helper

    W = numpy_helper.from_array(np.full((4, 8), 0.1, np.float32), "W")
    model = _tiny_model("AnalogMatMul", ["X", "W"], [W], dict(seeds=[1]))
    cpu, gpu = _raw_sessions(model, tmp_path)
    for x, needle in ((np.zeros((3, 7), np.float32), "features"),
                      (np.where(np.eye(3, 8) > 0, np.nan, 0).astype(np.float32), "NaN"),
                      (np.where(np.eye(3, 8) > 0, np.inf, 0).astype(np.float32), "Inf")):
        e_cpu, e_gpu = _error(lambda: cpu.run(None, {"X": x})), _error(lambda: gpu.run(None, {"X": x}))
        assert needle in e_cpu and needle in e_gpu, (e_cpu, e_gpu)
    Wc = numpy_helper.from_array(np.full((4, 2, 3), 0.1, np.float32), "W")
    conv = _tiny_model("AnalogConv", ["X", "W"], [Wc], dict(seeds=[1], kernel_shape=[3], pads=[0, 0]))
    cpu, gpu = _raw_sessions(conv, tmp_path)
    x = np.zeros((1, 2, 2), np.float32)  # shorter than the kernel
    e_cpu, e_gpu = _error(lambda: cpu.run(None, {"X": x})), _error(lambda: gpu.run(None, {"X": x}))
    assert "kernel span" in e_cpu and "kernel span" in e_gpu, (e_cpu, e_gpu)
    bad = _tiny_model("AnalogMatMul", ["X", "W"], [W], dict(seeds=[1]), x_type=TensorProto.DOUBLE)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(ort_library())
    assert _error(lambda: ort.InferenceSession(bad, so, providers=[CUDA_EP, CPU_EP]))
