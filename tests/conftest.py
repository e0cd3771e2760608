"""Shared helpers of the simulator tests (rpucuda through the pybind11 bindings).

Test modules import the helpers with ``from conftest import ...`` (pytest puts ``tests/`` on
``sys.path``).  Every statistical test documents how its tolerance follows from its sample size.
"""

import numpy as np
import pytest

from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.parameters import (
    BoundManagementType,
    ConstantStepDevice,
    IOParameters,
    MappingParameter,
    NoiseManagementType,
    UpdateParameters,
)

F32_EPS = float(np.finfo(np.float32).eps)


def io_params(**kw):
    """IOParameters bindings struct with the given fields (SPEC defaults otherwise)."""
    return IOParameters(**kw).as_bindings()


def quiet_io(**kw):
    """A noise-free, quantization-free, unbounded-input periphery; override fields with kw."""
    base = dict(
        out_noise=0.0,
        inp_res=0.0,
        out_res=0.0,
        inp_noise=0.0,
        w_noise=0.0,
        bound_management=BoundManagementType.NONE,
        noise_management=NoiseManagementType.ABS_MAX,
    )
    base.update(kw)
    return IOParameters(**base).as_bindings()


def mapping(max_input_size=512, max_output_size=512):
    return MappingParameter(max_input_size=max_input_size, max_output_size=max_output_size).as_bindings()


def linear_device(**kw):
    """ConstantStep device without any variation and with wide bounds: a linear device."""
    base = dict(
        dw_min=0.001,
        dw_min_dtod=0.0,
        dw_min_std=0.0,
        w_max=1000.0,
        w_max_dtod=0.0,
        w_min=-1000.0,
        w_min_dtod=0.0,
        up_down=0.0,
        up_down_dtod=0.0,
    )
    base.update(kw)
    return ConstantStepDevice(**base)


def analog_tile(out_size, in_size, device=None, forward=None, backward=None, update=None, mapping_par=None,
                seed=0):
    """AnalogTile from dataclasses (or bindings structs); defaults are the SPEC defaults."""

    def b(obj, default):
        obj = default if obj is None else obj
        return obj.as_bindings() if hasattr(obj, "as_bindings") else obj

    return rpu_base.tiles.AnalogTile(
        out_size,
        in_size,
        b(device, ConstantStepDevice()),
        b(forward, IOParameters()),
        b(backward, IOParameters()),
        b(update, UpdateParameters()),
        b(mapping_par, MappingParameter()),
        seed,
    )


def matmul_tol(x, w):
    """Absolute float32 error bound of x @ w.T computed in float32 (|x| |w|^T K eps)."""
    k = x.shape[1]
    return np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T * (2 * k * F32_EPS) + 1e-30


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


@pytest.fixture
def restore_threads():
    """Restores rpucuda's thread count after a test that changes it."""
    n = rpu_base.get_num_threads()
    yield n
    rpu_base.set_num_threads(n)


def ort_library():
    """Path of the onnxruntime op library (``aihw_deploy.runtime.library_path``), or None when
    it is not built/installed (the ORT tests then skip)."""
    from aihw_deploy import runtime

    try:
        return runtime.library_path()
    except FileNotFoundError:
        return None


def cuda_only():
    """pytest marks of a GPU test: the ``cuda`` marker, skipped without a CUDA build and a GPU."""
    from aihw_deploy.simulator import cuda as rcuda

    return [pytest.mark.cuda, pytest.mark.skipif(not rcuda.available(), reason="needs a CUDA build of rpucuda "
                                                 "(rpu_base.cuda.is_compiled()) and a GPU")]
