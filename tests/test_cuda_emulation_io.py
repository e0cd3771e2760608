"""Host emulation of the CUDA twins of the IO pipeline and the PCM inference model.

The twins' kernels (rpucuda/cuda/io_pipeline_kernels.h, inference_kernels.h) are RPU_HD structs
run by a driver templated on an "exec" (rpucuda/cuda/twin_grid.h).  tests/cpp/
test_cuda_io_emulation.cpp plays their grid on the host (shuffled block order, a few threads per
block, garbage-filled scratch) with the CPU's analog product, and must reproduce rpu::io_mvm,
pcm_program, pcm_weights_at, drift_readout, chip_reference and chip_at bit for bit (Global drift
read-outs: to 1e-6, the order of a double sum differs).  This checks every random-number index,
tile layout and bound-management decision of the CUDA code without a GPU; the CUDA launch code
itself is checked by tests/test_cuda_io.py on a GPU.

The program is compiled with the host C++ compiler from the rpucuda sources (no BLAS needed) and
cached by a hash of its inputs.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
AR = shutil.which("ar")
PROGRAM = ROOT / "tests/cpp/test_cuda_io_emulation.cpp"
# The rpucuda CPU sources the program needs (the twins' CPU references and what they call); no
# BLAS: the program defines the one BLAS hook of the thread pool.
LIB_SOURCES = [ROOT / "rpucuda" / f"{name}.cpp"
               for name in ("rng", "threading", "analog_gemm", "io_pipeline", "inference_noise", "parameters")]
FLAGS = ["-O2", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-pthread",
         f"-I{ROOT / 'rpucuda'}", f"-I{ROOT / 'rpucuda' / 'cuda'}"]

pytestmark = pytest.mark.skipif(CXX is None or AR is None,
                                reason="no host C++ compiler (g++/c++ or $CXX) and ar to build the emulation")


def _inputs_hash():
    h = hashlib.sha256(" ".join([CXX, *FLAGS]).encode())
    for d in (ROOT / "rpucuda", ROOT / "rpucuda" / "cuda"):
        for f in sorted(d.iterdir()):
            if f.suffix in (".h", ".cpp", ".cuh"):
                h.update(f.name.encode())
                h.update(f.read_bytes())
    h.update(PROGRAM.read_bytes())
    return h.hexdigest()[:16]


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"building the emulation failed: {' '.join(cmd[:3])} ...\n{r.stderr[-4000:]}")


@pytest.fixture(scope="module")
def emulator():
    out_dir = Path(os.environ.get("AIHW_EMULATION_CACHE", Path(tempfile.gettempdir()) / "aihw_cuda_emulation"))
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / f"test_cuda_io_emulation_{_inputs_hash()}"
    if not exe.exists():
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp_dir:
            objs = [Path(tmp_dir) / (f.stem + ".o") for f in LIB_SOURCES]
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                list(pool.map(lambda so: _run([CXX, *FLAGS, "-c", str(so[0]), "-o", str(so[1])]),
                              zip(LIB_SOURCES, objs)))
            lib = Path(tmp_dir) / "librpucuda_cpu.a"
            _run([AR, "rcs", str(lib), *map(str, objs)])
            tmp = Path(tmp_dir) / exe.name
            _run([CXX, *FLAGS, str(PROGRAM), str(lib), "-o", str(tmp)])
            os.replace(tmp, exe)  # atomic: a concurrent run sees the whole program or none
        for old in out_dir.glob("test_cuda_io_emulation_*"):  # builds of earlier sources
            if old != exe and old.is_file():
                old.unlink(missing_ok=True)
    return exe


@pytest.mark.parametrize("part", ["io", "pcm"])
def test_cuda_twin_emulation_matches_cpu(emulator, part):
    r = subprocess.run([str(emulator), part], capture_output=True, text=True, timeout=300)
    lines = r.stdout.splitlines()
    failed = [ln for ln in lines if ln.startswith("FAIL") or ln.startswith("  ")]
    assert r.returncode == 0 and not failed, "\n".join(failed[:40]) + "\n" + r.stderr[-2000:]
    # every case ran (a crash or an early exit would leave fewer lines)
    assert lines and lines[-1].startswith("0 of ") and int(lines[-1].split()[2]) >= (50 if part == "io" else 100)
