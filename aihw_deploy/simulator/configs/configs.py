"""RPU configurations: what a layer's tiles are made of (aihwkit-compatible names)."""

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, Dict, Union

from ..parameters import (
    PULSED_DEVICES,
    ConstantStepDevice,
    ExpStepDevice,
    FloatingPointDevice,
    IOParameters,
    LinearStepDevice,
    MappingParameter,
    PowStepDevice,
    SoftBoundsDevice,
    UpdateParameters,
)
from ..parameters import enums as _enums
from .inference_parameters import (
    DriftCompensation,
    GlobalDriftCompensation,
    PCMLikeNoiseModel,
    PerColumnDriftCompensation,
    WeightClipParameter,
    WeightModifierParameter,
    WeightRemapParameter,
)
from .inference_parameters import __dict__ as _inf_ns


@dataclass
class FloatingPointRPUConfig:
    """Exact floating-point tile: exact forward/backward, exact SGD update."""

    device: FloatingPointDevice = field(default_factory=FloatingPointDevice)
    mapping: MappingParameter = field(default_factory=MappingParameter)


@dataclass
class SingleRPUConfig:
    """One pulsed device per cross-point: IO-managed forward/backward, pulsed update."""

    device: Union[ConstantStepDevice, LinearStepDevice, SoftBoundsDevice, ExpStepDevice, PowStepDevice,
                  FloatingPointDevice] = field(default_factory=ConstantStepDevice)
    forward: IOParameters = field(default_factory=IOParameters)
    backward: IOParameters = field(default_factory=IOParameters)
    update: UpdateParameters = field(default_factory=UpdateParameters)
    mapping: MappingParameter = field(default_factory=MappingParameter)

    def __post_init__(self) -> None:
        if not isinstance(self.device, PULSED_DEVICES + (FloatingPointDevice,)):
            raise TypeError(f"SingleRPUConfig.device: expected a device dataclass, got {type(self.device).__name__}")


@dataclass
class InferenceRPUConfig:
    """Hardware-aware training and inference on a programmed chip (SPEC §4.4).

    Training: IO-managed forward on a modified copy of the weights (``modifier``), exact
    backward, plain SGD on the weights, then ``clip``/``remap``.  Inference: programming
    noise, drift and read noise of ``noise_model``; ``drift_compensation`` rescales outputs.
    """

    forward: IOParameters = field(default_factory=IOParameters)
    backward: IOParameters = field(default_factory=lambda: IOParameters(is_perfect=True))
    mapping: MappingParameter = field(default_factory=MappingParameter)
    noise_model: Any = field(default_factory=PCMLikeNoiseModel)
    drift_compensation: Any = field(default_factory=GlobalDriftCompensation)
    clip: WeightClipParameter = field(default_factory=WeightClipParameter)
    remap: WeightRemapParameter = field(default_factory=WeightRemapParameter)
    modifier: WeightModifierParameter = field(default_factory=WeightModifierParameter)

    def __post_init__(self) -> None:
        if self.noise_model is not None and not isinstance(self.noise_model, PCMLikeNoiseModel):
            raise TypeError("InferenceRPUConfig.noise_model: expected PCMLikeNoiseModel or None, "
                            f"got {type(self.noise_model).__name__}")
        if self.drift_compensation is not None and not isinstance(self.drift_compensation, DriftCompensation):
            raise TypeError("InferenceRPUConfig.drift_compensation: expected GlobalDriftCompensation, "
                            f"PerColumnDriftCompensation or None, got {type(self.drift_compensation).__name__}")


RPU_CONFIGS = (FloatingPointRPUConfig, SingleRPUConfig, InferenceRPUConfig)

# --- plain-value (de)serialization, for weights_only-safe checkpoints -----------------------

_CLASSES: Dict[str, type] = {}
for _cls in RPU_CONFIGS + PULSED_DEVICES + (FloatingPointDevice, IOParameters, UpdateParameters,
                                           MappingParameter, PCMLikeNoiseModel, GlobalDriftCompensation,
                                           PerColumnDriftCompensation, WeightClipParameter,
                                           WeightRemapParameter, WeightModifierParameter):
    _CLASSES[_cls.__name__] = _cls
_ENUMS: Dict[str, type] = {
    name: obj for ns in (vars(_enums), _inf_ns) for name, obj in ns.items()
    if isinstance(obj, type) and issubclass(obj, Enum) and obj is not Enum
}


def config_to_dict(obj: Any) -> Any:
    """Nested dict of plain values (str/int/float/bool/list/None) describing a config."""
    if is_dataclass(obj):
        out = {"__class__": type(obj).__name__}
        for f in fields(obj):
            out[f.name] = config_to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, Enum):
        return {"__enum__": type(obj).__name__, "name": obj.name}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    return obj


def config_from_dict(data: Any) -> Any:
    """Inverse of :func:`config_to_dict`."""
    if isinstance(data, dict) and "__enum__" in data:
        return _ENUMS[data["__enum__"]][data["name"]]
    if isinstance(data, dict) and "__class__" in data:
        name = data["__class__"]
        if name not in _CLASSES:
            raise ValueError(f"unknown config class {name!r} in checkpoint")
        kwargs = {k: config_from_dict(v) for k, v in data.items() if k != "__class__"}
        return _CLASSES[name](**kwargs)
    if isinstance(data, list):
        return [config_from_dict(v) for v in data]
    return data
