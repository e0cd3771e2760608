"""ONNX attributes of an analog layer's ``ai.aihw`` node (``ort_ops/README.md``), read from the
layer's RPU config and its tiles' state."""

import math
from dataclasses import fields
from enum import Enum
from typing import Any, Dict, List, Optional

from ..simulator.configs import InferenceRPUConfig, PCMLikeNoiseModel, SingleRPUConfig
from ..simulator.parameters import IOParameters

DOMAIN = "ai.aihw"
DOMAIN_VERSION = 1


class ExportError(RuntimeError):
    """A model cannot be exported (the message says which layer and why)."""


def io_attributes(io: IOParameters) -> Dict[str, Any]:
    """Every forward ``IOParameters`` field: bools as ints, enums as lower-case strings."""
    out: Dict[str, Any] = {}
    for f in fields(io):
        v = getattr(io, f.name)
        if isinstance(v, bool):
            out[f.name] = int(v)
        elif isinstance(v, Enum):
            out[f.name] = v.name.lower()
        elif isinstance(v, int):
            out[f.name] = int(v)
        else:
            out[f.name] = float(v)
    return out


def _noise_model_attributes(noise: Optional[PCMLikeNoiseModel]) -> Dict[str, Any]:
    noise = noise if noise is not None else PCMLikeNoiseModel()
    out: Dict[str, Any] = {"prog_coeff": [float(c) for c in noise.prog_coeff]}
    for name in ("g_max", "g_min", "t_read", "t_0", "prog_noise_scale", "read_noise_scale", "drift_scale"):
        out[name] = float(getattr(noise, name))
    return out


def layer_attributes(layer: Any, t_inference: Optional[float] = None) -> Dict[str, Any]:
    """Attributes of the ``AnalogMatMul``/``AnalogConv`` node of ``layer`` (an analog layer with
    ``SingleRPUConfig`` or ``InferenceRPUConfig`` tiles).

    ``noise_model`` is ``"pcm"`` iff the tiles are programmed; ``t_inference`` is the argument,
    else the tiles' current time after programming (0 when unprogrammed).
    """
    cfg = layer.rpu_config
    tiles = list(layer._tiles)
    name = layer._layer_name()
    attrs: Dict[str, Any] = {}
    if isinstance(cfg, InferenceRPUConfig):
        if cfg.modifier.enable_during_test and cfg.modifier.type.name != "NONE":
            raise ExportError(f"{name}: weight modifiers enabled during test (modifier.enable_during_test) "
                              "are training-time noise that the ONNX operator does not model")
        programmed = [t.programmed is not None for t in tiles]
        if any(programmed) and not all(programmed):
            raise ExportError(f"{name}: some tiles are programmed and others not; call program_analog_weights()")
        pcm = all(programmed)
        if t_inference is None:
            ts = {float(t.t_inference) for t in tiles} if pcm else {0.0}
            if len(ts) != 1:
                raise ExportError(f"{name}: tiles were drifted to different times {sorted(ts)}")
            t = ts.pop()
        else:
            t = float(t_inference)
        if not math.isfinite(t) or t < 0:
            raise ExportError(f"t_inference must be a finite number of seconds >= 0, got {t_inference!r}")
        comp = cfg.drift_compensation
        attrs.update(io_attributes(cfg.forward))
        attrs["max_input_size"] = int(cfg.mapping.max_input_size)
        attrs["max_output_size"] = int(cfg.mapping.max_output_size)
        attrs["noise_model"] = "pcm" if pcm else "none"
        attrs.update(_noise_model_attributes(cfg.noise_model))
        attrs["t_inference"] = t
        attrs["drift_compensation"] = "none" if comp is None else comp.kind
        attrs["seeds"] = [int(tl.seed) for tl in tiles]
        attrs["call_offsets"] = [int(tl.call) for tl in tiles]
        attrs["program_seeds"] = [int(tl.program_seed if tl.program_seed is not None else tl.seed) for tl in tiles]
    elif isinstance(cfg, SingleRPUConfig):
        # A pulsed tile deploys as its forward pass: IO pipeline, no noise model.
        attrs.update(io_attributes(cfg.forward))
        attrs["max_input_size"] = int(cfg.mapping.max_input_size)
        attrs["max_output_size"] = int(cfg.mapping.max_output_size)
        attrs["noise_model"] = "none"
        attrs.update(_noise_model_attributes(None))
        attrs["t_inference"] = 0.0
        attrs["drift_compensation"] = "none"
        attrs["seeds"] = [int(tl.seed) for tl in tiles]
        attrs["call_offsets"] = [int(tl._native.call_index) for tl in tiles]
        attrs["program_seeds"] = [int(tl.seed) for tl in tiles]
    else:
        raise ExportError(f"{name}: {type(cfg).__name__} layers export as standard ONNX operators, not ai.aihw")
    return attrs


def conv_attributes(layer: Any) -> Dict[str, Any]:
    """Geometry attributes of ``AnalogConv`` (ONNX Conv conventions)."""
    return {"kernel_shape": list(layer.kernel_size), "strides": list(layer.stride),
            "pads": list(layer.padding) * 2, "dilations": list(layer.dilation), "group": int(layer.groups)}


def summary(layer: Any, attrs: Dict[str, Any]) -> Dict[str, Any]:
    """A short JSON-able description of an analog layer (for ``metadata_props`` and ``inspect``)."""
    keys = ("is_perfect", "inp_res", "out_res", "out_bound", "out_noise", "w_noise", "w_noise_type",
            "noise_management", "bound_management", "max_input_size", "max_output_size", "noise_model",
            "t_inference", "drift_compensation")
    out = {"config": type(layer.rpu_config).__name__, "tiles": len(layer._tiles),
           "weight_shape": list(layer._torch_weight_shape())}
    out.update({k: attrs[k] for k in keys if k in attrs})
    return out


def attr_list(v: Any) -> List[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]
