"""RPU configurations, devices and enums (module path as in aihwkit)."""

from ..parameters import (
    BoundManagementType,
    ConstantStepDevice,
    ExpStepDevice,
    FloatingPointDevice,
    IOParameters,
    LinearStepDevice,
    MappingParameter,
    NoiseManagementType,
    PowStepDevice,
    PulseType,
    SoftBoundsDevice,
    UpdateParameters,
    WeightNoiseType,
)
from .configs import (
    RPU_CONFIGS,
    FloatingPointRPUConfig,
    InferenceRPUConfig,
    SingleRPUConfig,
    config_from_dict,
    config_to_dict,
)
from .inference_parameters import (
    GlobalDriftCompensation,
    PCMLikeNoiseModel,
    PerColumnDriftCompensation,
    WeightClipParameter,
    WeightClipType,
    WeightModifierParameter,
    WeightModifierType,
    WeightRemapParameter,
    WeightRemapType,
)

__all__ = [
    "FloatingPointRPUConfig", "SingleRPUConfig", "InferenceRPUConfig", "RPU_CONFIGS",
    "config_to_dict", "config_from_dict",
    "IOParameters", "UpdateParameters", "MappingParameter",
    "ConstantStepDevice", "LinearStepDevice", "SoftBoundsDevice", "ExpStepDevice", "PowStepDevice",
    "FloatingPointDevice",
    "NoiseManagementType", "BoundManagementType", "WeightNoiseType", "PulseType",
    "WeightModifierType", "WeightClipType", "WeightRemapType",
    "WeightModifierParameter", "WeightClipParameter", "WeightRemapParameter",
    "PCMLikeNoiseModel", "GlobalDriftCompensation", "PerColumnDriftCompensation",
]
