"""Host emulation of the CUDA twin of the pulsed update.

The twin's kernels (rpucuda/cuda/pulsed_update_kernels.h) are block bodies templated on an
executor; tests/cpp/test_cuda_update_emulation.cpp plays their grids on the host (threads and
blocks in order, and again shuffled with the counts split over several blocks; scratch memory
filled with garbage) and compares with rpu::pulsed_update:
 * bit for bit with dw_min_std = 0, for every device and pulse type, update / BL management,
   fixed or per-sample BL, every train layout (1 .. 64 slots per sample), several chunks of
   samples, cross-points near a bound (the pulse-by-pulse fix-up), tiles cut by the matrix edge;
 * bit for bit for the ConstantStep batch-aggregated step with dw_min_std > 0, and the same
   classification of the cross-points that go pulse by pulse;
 * in distribution for the cycle-to-cycle noise of pulse-by-pulse updates (another stream than
   the CPU's): mean and variance to 5 standard errors over the cross-points;
 * pulse_type NONE / FloatingPoint: the exact update to float rounding.
Each case also checks that it exercises what its name says (slot stride, chunks, split counts).
The CUDA launch code itself is checked by tests/test_cuda_update.py on a GPU.

The program is compiled with the host C++ compiler from the rpucuda sources and OpenBLAS (the
scipy-openblas32 build dependency), cached by a hash of its inputs.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
SOURCES = [ROOT / "tests/cpp/test_cuda_update_emulation.cpp"] + [
    ROOT / "rpucuda" / f"{name}.cpp" for name in ("pulsed_update", "devices", "rng", "parameters", "blas", "threading")
]
# (no -march: the emulation must round as the portable CPU code and the CUDA kernels do)
FLAGS = ["-O2", "-std=c++17", "-ffp-contract=off", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
         "-pthread", f"-I{ROOT / 'rpucuda'}", f"-I{ROOT / 'rpucuda' / 'cuda'}"]

pytestmark = pytest.mark.skipif(CXX is None, reason="no host C++ compiler (g++/c++ or $CXX) to build the emulation")


def _blas():
    s = pytest.importorskip("scipy_openblas32", reason="the emulation links OpenBLAS from scipy-openblas32")
    return s.get_include_dir(), s.get_lib_dir()


def _inputs_hash(extra):
    h = hashlib.sha256(" ".join([CXX, *FLAGS, *extra]).encode())
    for d in (ROOT / "rpucuda", ROOT / "rpucuda" / "cuda"):
        for f in sorted(d.iterdir()):
            if f.suffix in (".h", ".cpp", ".cuh"):
                h.update(f.name.encode())
                h.update(f.read_bytes())
    h.update(SOURCES[0].read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def emulator():
    inc, lib = _blas()
    link = [f"-I{inc}", f"-L{lib}", "-lscipy_openblas", f"-Wl,-rpath,{lib}"]
    out_dir = Path(os.environ.get("AIHW_EMULATION_CACHE", Path(tempfile.gettempdir()) / "aihw_cuda_emulation"))
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / f"test_cuda_update_emulation_{_inputs_hash(link)}"
    if not exe.exists():
        tmp = exe.with_name(exe.name + f".{os.getpid()}.tmp")
        r = subprocess.run([CXX, *FLAGS, *map(str, SOURCES), *link, "-o", str(tmp)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"building the emulation failed:\n{r.stderr[-4000:]}")
        os.replace(tmp, exe)  # atomic: a concurrent run sees the whole program or none
    return exe


def test_cuda_update_emulation_matches_cpu(emulator):
    r = subprocess.run([str(emulator)], capture_output=True, text=True, timeout=600)
    lines = r.stdout.splitlines()
    failed = [ln for ln in lines if not ln.startswith("PASS")]
    assert r.returncode == 0, "\n".join(failed[:60]) + "\n" + r.stderr[-2000:]
    # every case ran (a crash or an early exit would leave fewer lines)
    n_pass = sum(ln.startswith("PASS") for ln in lines)
    assert lines[-1] == f"{n_pass} cases, 0 failures" and n_pass >= 110, lines[-1]
