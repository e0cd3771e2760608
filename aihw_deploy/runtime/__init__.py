"""onnxruntime helpers: the path of the op library ``libaihw_ort_ops.so``, session options that
register it, and :class:`InferenceSession`, a thin wrapper that feeds an exported model's
optional ``seed`` / ``t_inference`` inputs.

The same ``.so`` serves C++ hosts (``Ort::SessionOptions::RegisterCustomOpsLibrary``) and
Triton's onnxruntime backend (``model_operations { op_library_filename: "<library_path()>" }``).
"""

import os
import sysconfig
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

LIBRARY_NAME = "libaihw_ort_ops.so"
LIBRARY_ENV = "AIHW_ORT_OPS_LIBRARY"
SEED_INPUT = "seed"
T_INPUT = "t_inference"

__all__ = ["library_path", "session_options", "InferenceSession", "LIBRARY_ENV"]


def _candidates() -> List[Path]:
    out: List[Path] = []
    import aihw_deploy

    for d in getattr(aihw_deploy, "__path__", []):
        out.append(Path(d) / "lib" / LIBRARY_NAME)
    for key in ("platlib", "purelib"):
        out.append(Path(sysconfig.get_paths()[key]) / "aihw_deploy" / "lib" / LIBRARY_NAME)
    return out


def library_path() -> str:
    """Absolute path of the installed onnxruntime op library.

    ``$AIHW_ORT_OPS_LIBRARY`` (a file path) takes precedence; otherwise ``aihw_deploy/lib/`` of
    the installed package.  Raises ``FileNotFoundError`` naming the places searched."""
    env = os.environ.get(LIBRARY_ENV)
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"{LIBRARY_ENV}={env!r} does not name an existing file")
        return os.path.abspath(env)
    tried = _candidates()
    for p in tried:
        if p.is_file():
            return str(p.resolve())
    raise FileNotFoundError(
        f"{LIBRARY_NAME} not found (looked in: {', '.join(str(p.parent) for p in tried)}); "
        "build and install aihw-deploy with the onnxruntime ops (AIHW_BUILD_ORT_OPS=ON, the default), "
        f"or set {LIBRARY_ENV}")


def session_options(options: Any = None, *, library: Optional[str] = None) -> Any:
    """``onnxruntime.SessionOptions`` (new, or ``options``) with the op library registered."""
    import onnxruntime as ort

    so = options if options is not None else ort.SessionOptions()
    so.register_custom_ops_library(library or library_path())
    return so


class InferenceSession:
    """An ``onnxruntime.InferenceSession`` of an exported model with the op library registered.

    Args:
        path: ``.onnx`` file (or serialized model bytes).
        providers: onnxruntime execution providers (default: CPU).
        seed: fed to the model's ``seed`` input on every run (models exported with
            ``to_onnx(..., seed=...)``): reproducible noise.  ``None``: the model's default.
        t_inference: seconds after programming, fed to the model's ``t_inference`` input (models
            with programmed layers).  ``None``: the time stored at export.
        use_library: False runs the model on a stock onnxruntime (the deterministic fallback
            functions; the model must have been exported with ``fallback=True``).
        sess_options: base ``onnxruntime.SessionOptions``.

    ``run(output_names, input_feed)`` is onnxruntime's, with the extra inputs added; calling the
    session with arrays (``sess(x)``) feeds the model's inputs in order and returns the first
    output.  ``session`` is the underlying onnxruntime session.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]", bytes], providers: Optional[Sequence[Any]] = None,
                 seed: Optional[int] = None, t_inference: Optional[float] = None, *, use_library: bool = True,
                 sess_options: Any = None) -> None:
        import onnxruntime as ort

        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"InferenceSession: seed must be an int or None, got {seed!r}")
        if t_inference is not None:
            t = float(t_inference)
            if not np.isfinite(t) or t < 0:
                raise ValueError(f"InferenceSession: t_inference must be a finite number of seconds >= 0, "
                                 f"got {t_inference!r}")
        if sess_options is None:
            so = ort.SessionOptions()
            # Exported models give seed/t_inference defaults as initializers that are also graph
            # inputs (overridable): onnxruntime warns about that on every load.
            so.log_severity_level = 3
        else:
            so = sess_options
        if use_library:
            session_options(so)
        model = path if isinstance(path, bytes) else os.fspath(path)
        if not isinstance(path, bytes) and not os.path.isfile(model):
            raise FileNotFoundError(f"InferenceSession: no such model file: {model!r}")
        try:
            self.session = ort.InferenceSession(model, so, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not use_library and "ai.aihw" in msg:
                msg += " (the model has no fallback functions: export with fallback=True or use the op library)"
            what = model if isinstance(model, str) else "the model"
            raise RuntimeError(f"InferenceSession: onnxruntime cannot load {what}: {msg}") from exc
        overridable = {i.name for i in self.session.get_overridable_initializers()}
        required = {i.name for i in self.session.get_inputs()}
        self._extra: Dict[str, np.ndarray] = {}
        for name, value, dtype in ((SEED_INPUT, seed, np.int64), (T_INPUT, t_inference, np.float32)):
            if value is None:
                continue
            if name not in overridable and name not in required:
                raise ValueError(f"InferenceSession: the model has no {name!r} input "
                                 f"(export with to_onnx(..., {name}=...) to add one)")
            self._extra[name] = np.array(value, dtype=dtype)
        self.input_names = [i.name for i in self.session.get_inputs() if i.name not in (SEED_INPUT, T_INPUT)]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, output_names: Optional[Sequence[str]] = None, input_feed: Optional[Dict[str, Any]] = None,
            run_options: Any = None) -> List[np.ndarray]:
        feed = dict(self._extra)
        feed.update(input_feed or {})
        return self.session.run(output_names, feed, run_options)

    def __call__(self, *inputs: Any) -> np.ndarray:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"InferenceSession: expected {len(self.input_names)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(inputs)}")
        feed = {}
        for name, x in zip(self.input_names, inputs):
            if hasattr(x, "detach"):
                x = x.detach().cpu().numpy()
            feed[name] = np.ascontiguousarray(x, dtype=np.float32)
        return self.run(None, feed)[0]
