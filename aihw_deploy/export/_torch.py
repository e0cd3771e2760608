"""``torch.export`` (``.pt2``) and TorchScript (``torch.jit.trace``) files of an analog model.

Analog layers appear as ``torch.ops.aihw.analog_mvm`` / ``analog_conv`` nodes (``aihw_deploy.ops``)
with the chip weights, compensation factors and generator positions of export time baked in as
constants: every call of the saved program uses the same per-call noise sample (that of the
tiles' next call at export time).  Loading needs ``import aihw_deploy`` (it registers the ops).
"""

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import PathLike, atomic_write
from ._onnx import check_model_and_input, dynamic_batch_args, quiet, root_cause, traced_eval
from ._attributes import ExportError


def to_torch_export(model: nn.Module, example_input: Any, path: PathLike, *, dynamic_batch: bool = True) -> Path:
    """Saves ``torch.export.export(model.eval(), example_input)`` to ``path`` (``.pt2``)."""
    args = check_model_and_input(model, example_input, "to_torch_export")
    trace_args, dyn = dynamic_batch_args(args, dynamic_batch)
    with traced_eval(model), quiet():
        try:
            program = torch.export.export(model, trace_args, dynamic_shapes=dyn)
        except Exception as exc:
            raise ExportError(f"torch.export failed: {root_cause(exc)}") from exc
    return atomic_write(path, lambda tmp: torch.export.save(program, tmp))


def to_torchscript(model: nn.Module, example_input: Any, path: PathLike) -> Path:
    """Saves ``torch.jit.trace(model.eval(), example_input)`` to ``path``."""
    args = check_model_and_input(model, example_input, "to_torchscript")
    with traced_eval(model), quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            traced = torch.jit.trace(model, args, check_trace=False)
        except Exception as exc:
            raise ExportError(f"torch.jit.trace failed: {root_cause(exc)}") from exc

    def save(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.save: "use torch.export"
            torch.jit.save(traced, tmp)

    return atomic_write(path, save)
