"""Loads the compiled module ``rpu_base`` after its BLAS library."""

import ctypes
import os


def _preload_blas() -> None:
    # rpu_base links libscipy_openblas.so from the scipy-openblas32 wheel.  Its RUNPATH points
    # there for normal installs; loading it here first also covers editable/in-tree builds.
    try:
        import scipy_openblas32
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ImportError("aihw-deploy needs the 'scipy-openblas32' package") from exc
    path = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
    if os.path.exists(path):
        # rpucuda runs BLAS single-threaded inside its own pool; without this, OpenBLAS would
        # start a thread pool of its own whose idle threads spin on the cores we use.
        saved = os.environ.get("OPENBLAS_NUM_THREADS")
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        finally:
            if saved is None:
                del os.environ["OPENBLAS_NUM_THREADS"]
            else:
                os.environ["OPENBLAS_NUM_THREADS"] = saved


_preload_blas()

from . import rpu_base  # noqa: E402  (compiled module)

__all__ = ["rpu_base"]
