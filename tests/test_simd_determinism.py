"""Determinism of the IO pipeline's fast paths: the analog product follows its documented
summation order (rpucuda/analog_gemm.h) exactly, and io_mvm gives the same bits for any thread
count and for every instruction-set level (AVX-512 / AVX2+FMA / portable, RPU_SIMD)."""

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import f32, io_params, mapping

from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.parameters import BoundManagementType, NoiseManagementType, WeightNoiseType

io_mvm = rpu_base.tiles.io_mvm


def _libm_fmaf():
    name = ctypes.util.find_library("m")
    try:
        lib = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        f = lib.fmaf
    except (OSError, AttributeError):
        return None
    f.restype = ctypes.c_float
    f.argtypes = [ctypes.c_float, ctypes.c_float, ctypes.c_float]
    return f


FMAF = _libm_fmaf()


def _dot16(x, w):
    """Forward order: 16 lane-wise fma chains over i = l, l+16, ..., then the tree l+8, l+4, l+2, l+1."""
    s = [np.float32(0.0)] * 16
    for i in range(len(x)):
        s[i & 15] = np.float32(FMAF(float(x[i]), float(w[i]), float(s[i & 15])))
    for h in (8, 4, 2):
        s = [np.float32(s[l] + s[l + h]) for l in range(h)]
    return np.float32(s[0] + s[1])


def _chain(x, w):
    """Backward order: one fma chain over i ascending."""
    acc = np.float32(0.0)
    for i in range(len(x)):
        acc = np.float32(FMAF(float(x[i]), float(w[i]), float(acc)))
    return acc


@pytest.mark.skipif(FMAF is None, reason="needs fmaf from the C math library")
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("n_rows", [1, 3, 9])
def test_analog_product_follows_documented_order(transposed, n_rows, restore_threads):
    g = np.random.default_rng(5 + n_rows)
    M, K = 21, 37  # K not a multiple of 16: the masked tail of the 16 lanes
    W = f32(g.normal(size=(M, K)))
    x = f32(g.normal(size=(n_rows, M if transposed else K)))
    io = io_params(is_perfect=True)  # y = the analog product itself
    for threads in (1, 2, 3):
        rpu_base.set_num_threads(threads)
        y = io_mvm(W, x, io=io, mapping=mapping(), transposed=transposed)
        if transposed:
            ref = np.array([[_chain(x[r], W[:, o]) for o in range(K)] for r in range(n_rows)], np.float32)
        else:
            ref = np.array([[_dot16(x[r], W[o]) for o in range(M)] for r in range(n_rows)], np.float32)
        np.testing.assert_array_equal(y, ref)


# A set of io_mvm calls covering the element kernels: quantization on/off, clipping on/off,
# stochastic rounding, input/output/weight noise, bound management (both kinds, with saturated
# rows), every noise management, several tiles (accumulation), the backward direction, a zero
# row and a NaN row, and small batches (the output-split path).
CASES = [
    dict(),
    dict(inp_noise=0.05, inp_sto_round=True, out_sto_round=True),
    dict(w_noise=0.02, w_noise_type=WeightNoiseType.PCM_READ),
    dict(noise_management=NoiseManagementType.AVERAGE_ABS_MAX,
         bound_management=BoundManagementType.ITERATIVE_WORST_CASE, out_bound=0.5),
    dict(out_bound=0.5, noise_management=NoiseManagementType.MAX, w_noise=0.01,
         w_noise_type=WeightNoiseType.ADDITIVE_CONSTANT),
    dict(inp_res=0.0, out_res=0.0, out_noise=0.0),
    dict(noise_management=NoiseManagementType.CONSTANT, nm_thres=0.5, out_bound=0.8),
    dict(is_perfect=True),
    dict(noise_management=NoiseManagementType.NONE, bound_management=BoundManagementType.NONE,
         inp_res=100.0, out_res=7.0, out_bound=0.0),
]
SHAPES = [(70, 300, 9), (40, 33, 2), (200, 130, 1)]  # (M, K, N)


def _outputs():
    out = []
    for ci, kw in enumerate(CASES):
        for si, (M, K, N) in enumerate(SHAPES):
            for transposed in (False, True):
                g = np.random.default_rng(100 * ci + 10 * si + transposed)
                W = f32(g.normal(size=(M, K)) * 0.2)
                x = f32(g.uniform(-1, 1, size=(N, M if transposed else K)))
                if N > 3:
                    x[0] = 0.0
                    x[1, 3] = 20.0
                    x[2, 5] = np.nan
                y = io_mvm(W, x, io=io_params(**kw), mapping=mapping(128, 64), seed=7 + ci, call=3,
                           transposed=transposed)
                out.append(y.view(np.uint32).tolist())
    return out


def test_io_mvm_is_independent_of_thread_count(restore_threads):
    ref = None
    for threads in (1, 2, 3, 5):
        rpu_base.set_num_threads(threads)
        got = _outputs()
        if ref is None:
            ref = got
        else:
            assert got == ref, f"io_mvm differs with {threads} threads"


_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import test_simd_determinism as t
from aihw_deploy.simulator import rpu_base
rpu_base.set_num_threads(2)
json.dump(t._outputs(), sys.stdout)
"""


@pytest.mark.parametrize("level", ["generic", "avx2"])
def test_io_mvm_is_the_same_on_every_simd_level(level, restore_threads):
    rpu_base.set_num_threads(2)
    ref = _outputs()
    env = dict(os.environ, RPU_SIMD=level)
    code = _CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == ref, f"io_mvm differs with RPU_SIMD={level}"


@pytest.mark.parametrize("level", ["generic", "avx2"])
def test_bulk_normals_are_the_same_on_every_simd_level(level):
    args = [(1000, 3, 2, 1, 5, 0), (37, 2**40 + 1, 2, 0, 2**33, 4), (4 * 70 + 3, 9, 4, 2, 7, (2**32 - 20) * 4)]
    ref = [(rpu_base.rng.normals(*a).view(np.uint32).tolist(), rpu_base.rng.uniforms(*a).view(np.uint32).tolist())
           for a in args]
    code = (
        "import json, sys\nfrom aihw_deploy.simulator import rpu_base\n"
        f"args = {args!r}\n"
        "json.dump([(rpu_base.rng.normals(*a).view('uint32').tolist(), "
        "rpu_base.rng.uniforms(*a).view('uint32').tolist()) for a in args], sys.stdout)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, RPU_SIMD=level), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = [tuple(p) for p in json.loads(res.stdout)]
    assert got == [tuple(p) for p in ref]
