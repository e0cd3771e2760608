"""The C++ host (tools/ort_host/main.cpp): built with g++ against the onnxruntime pip wheel, it
runs a model with libaihw_ort_ops.so registered and prints the outputs, which must equal the
Python onnxruntime outputs of the same model, input and call order (noise included)."""

import glob
import os
import shutil
import subprocess

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_SRC = os.path.join(ROOT, "tools", "ort_host", "main.cpp")
from conftest import ort_library  # noqa: E402

DOMAIN = "ai.aihw"


LIB = ort_library()
pytestmark = pytest.mark.skipif(LIB is None, reason="libaihw_ort_ops.so is not installed")


def _headers(tmp):
    """onnxruntime C++ API headers: ONNXRUNTIME_ROOT, an installed libonnxruntime-dev, the
    ones the CMake build fetched, or a fresh fetch (tools/fetch_onnxruntime_headers.sh)."""
    cands = []
    root = os.environ.get("ONNXRUNTIME_ROOT")
    if root:
        cands += [os.path.join(root, "include"), os.path.join(root, "include", "onnxruntime")]
    cands += ["/usr/include/onnxruntime", "/usr/local/include/onnxruntime"]
    for stamp in glob.glob(os.path.join(ROOT, "build", "*", "onnxruntime-headers", ".onnxruntime_headers.stamp")):
        with open(stamp) as f:
            cands.append(f.readline().strip())
    for c in cands:
        if c and os.path.exists(os.path.join(c, "onnxruntime_cxx_api.h")):
            return c
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "fetch_onnxruntime_headers.sh"), str(tmp / "headers")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"onnxruntime headers unavailable: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout.strip().splitlines()[0]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    tmp = tmp_path_factory.mktemp("ort_host")
    inc = _headers(tmp)
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so.1*")))
    if not libs:
        pytest.skip(f"no libonnxruntime.so.1* in {capi}")
    libdir = tmp / "lib"
    libdir.mkdir()
    for name in ("libonnxruntime.so.1", "libonnxruntime.so"):  # SONAME, and the -l link name
        os.symlink(libs[-1], libdir / name)
    exe = tmp / "ort_host"
    cmd = [cxx, "-std=c++17", "-O1", "-Wall", "-o", str(exe), HOST_SRC, f"-I{inc}", f"-L{libdir}", "-lonnxruntime",
           f"-Wl,-rpath,{libdir}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"building ort_host failed:\n{' '.join(cmd)}\n{r.stderr}"
    return str(exe)


def run_host(host, model_path, *args):
    return subprocess.run([host, str(model_path), *map(str, args)], capture_output=True, text=True, timeout=120)


def parse_outputs(stdout):
    """{(name, run): array} from the host's printout."""
    outs, cur, shape, vals = {}, None, None, []

    def flush():
        if cur is not None:
            outs[cur] = np.array(vals, dtype=np.float32).reshape(shape)

    for line in stdout.splitlines():
        if line.startswith("output "):
            flush()
            parts = line.split()
            cur, shape, vals = (parts[1], int(parts[2])), tuple(int(v) for v in parts[4:]), []
        elif line.startswith("input "):
            flush()
            cur = None
        elif cur is not None:
            vals.append(float(line))
    flush()
    return outs


def model_file(tmp_path):
    """AnalogConv (2 groups, pcm chip at t_inference) -> Relu -> Flatten -> AnalogMatMul + bias."""
    g = np.random.default_rng(0)
    wc = g.uniform(-0.5, 0.5, (4, 1, 3, 3)).astype(np.float32)
    wl = g.uniform(-0.3, 0.3, (5, 4 * 4 * 4)).astype(np.float32)
    bl = g.normal(size=5).astype(np.float32)
    nodes = [
        helper.make_node("AnalogConv", ["X", "WC", "", "", "t_inference"], ["C"], domain=DOMAIN, name="conv",
                         group=2, pads=[1, 1, 1, 1], strides=[1, 1], seeds=[3, 4], call_offsets=[0, 0],
                         noise_model="pcm", drift_compensation="global", program_seeds=[30, 40], out_noise=0.05),
        helper.make_node("Relu", ["C"], ["R"]),
        helper.make_node("Flatten", ["R"], ["F"], axis=1),
        helper.make_node("AnalogMatMul", ["F", "WL", "BL"], ["Y"], domain=DOMAIN, name="fc", seeds=[5],
                         call_offsets=[2], max_input_size=32, inp_noise=0.01),
    ]
    graph = helper.make_graph(
        nodes, "host_test",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 2, 4, 4]),
         helper.make_tensor_value_info("t_inference", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(wc, "WC"), numpy_helper.from_array(wl, "WL"), numpy_helper.from_array(bl, "BL")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    path = tmp_path / "model.onnx"
    onnx.save(m, str(path))
    return path


def python_runs(path, x, t, runs):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.register_custom_ops_library(LIB)
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [s.run(None, {"X": x, "t_inference": np.array(t, np.float32)})[0] for _ in range(runs)]


def test_host_matches_python(host, tmp_path):
    path = model_file(tmp_path)
    x = np.random.default_rng(1).normal(size=(3, 2, 4, 4)).astype(np.float32)
    xfile = tmp_path / "x.bin"
    x.tofile(xfile)
    r = run_host(host, path, "--library", LIB, "--input", xfile, "--shape", "3,2,4,4", "--t-inference", 3600,
                 "--runs", 3)
    assert r.returncode == 0, r.stderr
    outs = parse_outputs(r.stdout)
    ref = python_runs(path, x, 3600.0, 3)
    for i in range(3):
        np.testing.assert_array_equal(outs[("Y", i)], ref[i])  # same chip, same calls: bit-identical
    assert not np.array_equal(outs[("Y", 0)], outs[("Y", 1)])  # fresh noise per run


def test_host_random_input(host, tmp_path):
    path = model_file(tmp_path)
    r = run_host(host, path, "--library", LIB, "--random", 7, "--shape", "2,2,4,4", "--t-inference", 0,
                 "--print-input")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "input X shape 2 2 4 4"
    x = np.array([float(v) for v in lines[1:1 + 64]], np.float32).reshape(2, 2, 4, 4)
    assert np.all(np.abs(x) <= 1)
    np.testing.assert_array_equal(parse_outputs(r.stdout)[("Y", 0)], python_runs(path, x, 0.0, 1)[0])


def test_host_errors(host, tmp_path):
    path = model_file(tmp_path)
    r = run_host(host, path, "--random", 1, "--t-inference", 0)  # no library, no fallback function
    assert r.returncode == 1 and "AnalogConv" in r.stderr
    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 1, 2, 3] = np.nan
    xfile = tmp_path / "nan.bin"
    x.tofile(xfile)
    r = run_host(host, path, "--library", LIB, "--input", xfile, "--shape", "1,2,4,4", "--t-inference", 0)
    assert r.returncode == 1 and "AnalogConv: input X contains NaN" in r.stderr
    r = run_host(host, path, "--library", str(tmp_path / "missing.so"), "--random", 1, "--t-inference", 0)
    assert r.returncode == 1 and "missing.so" in r.stderr
    r = run_host(host, path, "--library", LIB, "--random", 1, "--t-inference", -1)
    assert r.returncode == 1 and "t_inference" in r.stderr
    assert run_host(host, path, "--bogus").returncode == 2
