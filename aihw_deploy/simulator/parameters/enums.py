"""Enumerations of the simulator (names as in aihwkit).  Each maps by *name* onto the enum of
the same name in ``rpu_base.parameters``."""

from enum import Enum


class NoiseManagementType(Enum):
    """How the input of a tile is scaled before the DAC (SPEC §1.2)."""

    NONE = "None"
    ABS_MAX = "AbsMax"
    MAX = "Max"
    AVERAGE_ABS_MAX = "AverageAbsMax"
    CONSTANT = "Constant"


class BoundManagementType(Enum):
    """How saturated outputs are handled (SPEC §1.8)."""

    NONE = "None"
    ITERATIVE = "Iterative"
    ITERATIVE_WORST_CASE = "IterativeWorstCase"


class WeightNoiseType(Enum):
    """Weight read noise applied on every forward call (SPEC §1.5)."""

    NONE = "None"
    ADDITIVE_CONSTANT = "AdditiveConstant"
    PCM_READ = "PCMRead"


class PulseType(Enum):
    """Pulse scheme of the update (SPEC §2)."""

    NONE = "None"
    STOCHASTIC = "Stochastic"
    STOCHASTIC_COMPRESSED = "StochasticCompressed"
    DETERMINISTIC_IMPLICIT = "DeterministicImplicit"


class DriftCompensationType(Enum):
    """Kind of drift compensation (SPEC §4.3); used by the ONNX attributes."""

    NONE = "None"
    GLOBAL = "Global"
    PER_COLUMN = "PerColumn"
