"""Resistive device models (SPEC §3).  Each dataclass holds the fields of its model only and
converts onto rpucuda's flat ``DeviceParameters`` struct."""

from dataclasses import dataclass
from typing import ClassVar

from .converter import to_bindings, validate_fields


@dataclass
class _PulsedDeviceFields:
    dw_min: float = 0.001
    dw_min_dtod: float = 0.3
    dw_min_std: float = 0.3
    w_max: float = 0.6
    w_max_dtod: float = 0.3
    w_min: float = -0.6
    w_min_dtod: float = 0.3
    up_down: float = 0.0
    up_down_dtod: float = 0.01
    construction_seed: int = 0
    enforce_consistency: bool = True

    device_type: ClassVar[str] = ""

    def __post_init__(self) -> None:
        validate_fields(self)

    def as_bindings(self):
        from ..rpu_base import parameters as p

        validate_fields(self)
        if self.construction_seed < 0:
            raise ValueError(f"{type(self).__name__}.construction_seed: must be >= 0")
        return to_bindings(self, p.DeviceParameters, {"type": _DeviceKind[self.device_type]})


class _DeviceKind:
    """Maps a device class to the ``rpu_base.parameters.DeviceType`` value."""

    def __class_getitem__(cls, name: str):
        from ..rpu_base import parameters as p

        return getattr(p.DeviceType, name)


@dataclass
class ConstantStepDevice(_PulsedDeviceFields):
    """Constant step ``dw_min`` (with device-to-device and cycle-to-cycle variation), hard
    bounds ``[w_min, w_max]`` per device."""

    device_type: ClassVar[str] = "CONSTANT_STEP"


@dataclass
class LinearStepDevice(_PulsedDeviceFields):
    """Step shrinking linearly as the weight approaches the bound it moves to:
    ``dw_up (1 - gamma_up w / w_max)``, ``dw_down (1 - gamma_down w / w_min)``."""

    gamma_up: float = 0.0
    gamma_down: float = 0.0
    gamma_up_dtod: float = 0.05
    gamma_down_dtod: float = 0.05

    device_type: ClassVar[str] = "LINEAR_STEP"


@dataclass
class SoftBoundsDevice(_PulsedDeviceFields):
    """Soft bounds: ``dw_up (1 - w / w_max)``, ``dw_down (1 - w / w_min)``; the step goes to zero
    at the bound."""

    device_type: ClassVar[str] = "SOFT_BOUNDS"


@dataclass
class ExpStepDevice(_PulsedDeviceFields):
    """Exponential step: ``z = 2 a w / (w_max - w_min) + b``; up step
    ``dw_up max(0, 1 - A_up exp(gamma_up z))``, down step ``dw_down max(0, 1 - A_down exp(-gamma_down z))``."""

    A_up: float = 0.00081
    A_down: float = 0.36833
    gamma_up: float = 12.44625
    gamma_down: float = 12.78785
    a: float = 0.244
    b: float = 0.2425

    device_type: ClassVar[str] = "EXP_STEP"


@dataclass
class PowStepDevice(_PulsedDeviceFields):
    """Power step: with ``omega = (w_max - w) / (w_max - w_min)``, up step
    ``dw_up omega^gamma_up``, down step ``dw_down (1 - omega)^gamma_down``, where
    ``gamma_{up,down} = pow_gamma (1 +- beta + pow_gamma_dtod xi)`` and
    ``beta = pow_up_down + pow_up_down_dtod xi``."""

    pow_gamma: float = 1.0
    pow_gamma_dtod: float = 0.1
    pow_up_down: float = 0.0
    pow_up_down_dtod: float = 0.0

    device_type: ClassVar[str] = "POW_STEP"


@dataclass
class FloatingPointDevice:
    """Ideal device: exact floating-point update, no bounds."""

    device_type: ClassVar[str] = "FLOATING_POINT"

    def as_bindings(self):
        from ..rpu_base import parameters as p

        out = p.DeviceParameters()
        out.type = p.DeviceType.FLOATING_POINT
        return out


PULSED_DEVICES = (ConstantStepDevice, LinearStepDevice, SoftBoundsDevice, ExpStepDevice, PowStepDevice)
