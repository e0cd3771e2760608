"""Parameter dataclasses of the simulator, mirrored onto rpucuda's C++ structs."""

from .converter import to_bindings
from .devices import (
    PULSED_DEVICES,
    ConstantStepDevice,
    ExpStepDevice,
    FloatingPointDevice,
    LinearStepDevice,
    PowStepDevice,
    SoftBoundsDevice,
)
from .enums import (
    BoundManagementType,
    DriftCompensationType,
    NoiseManagementType,
    PulseType,
    WeightNoiseType,
)
from .io import IOParameters, MappingParameter, UpdateParameters

__all__ = [
    "to_bindings",
    "IOParameters",
    "UpdateParameters",
    "MappingParameter",
    "ConstantStepDevice",
    "LinearStepDevice",
    "SoftBoundsDevice",
    "ExpStepDevice",
    "PowStepDevice",
    "FloatingPointDevice",
    "PULSED_DEVICES",
    "NoiseManagementType",
    "BoundManagementType",
    "WeightNoiseType",
    "PulseType",
    "DriftCompensationType",
]
