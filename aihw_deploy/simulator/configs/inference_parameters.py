"""Parameters of hardware-aware training and inference (SPEC §4)."""

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import List

from ..parameters.converter import validate_fields


class WeightModifierType(Enum):
    """Weight perturbation applied to the forward copy during hardware-aware training."""

    NONE = "None"
    ADD_NORMAL = "AddNormal"
    MULT_NORMAL = "MultNormal"
    DISCRETIZE = "Discretize"
    DISCRETIZE_ADD_NORMAL = "DiscretizeAddNormal"
    POLY = "Poly"
    PCM_NOISE = "PCMNoise"
    DROP_CONNECT = "DropConnect"


class WeightClipType(Enum):
    """Weight clipping after each training step."""

    NONE = "None"
    FIXED_VALUE = "FixedValue"
    LAYER_GAUSSIAN = "LayerGaussian"
    AVERAGE_CHANNEL_MAX = "AverageChannelMax"


class WeightRemapType(Enum):
    """Weight remapping after each training step."""

    NONE = "None"
    LAYERWISE_SYMMETRIC = "LayerwiseSymmetric"
    CHANNELWISE_SYMMETRIC = "ChannelwiseSymmetric"


@dataclass
class PCMLikeNoiseModel:
    """PCM programming noise, drift and 1/f read noise (SPEC §4.1-4.2).

    ``g_max``/``g_min`` in µS, ``t_read`` and ``t_0`` in seconds; ``prog_coeff`` are the
    coefficients c0, c1, c2 of the programming-noise polynomial (fitted at g_max = 25 µS).
    """

    prog_coeff: List[float] = field(default_factory=lambda: [0.26348, 1.9650, -1.1731])
    g_max: float = 25.0
    g_min: float = 0.0
    t_read: float = 250.0e-9
    t_0: float = 20.0
    prog_noise_scale: float = 1.0
    read_noise_scale: float = 1.0
    drift_scale: float = 1.0

    def __post_init__(self) -> None:
        validate_fields(self)
        self.prog_coeff = list(self.prog_coeff)
        if len(self.prog_coeff) != 3:
            raise ValueError(f"PCMLikeNoiseModel.prog_coeff: expected 3 coefficients (c0, c1, c2), got {len(self.prog_coeff)}")
        for name in ("g_max", "g_min", "t_read", "t_0", "prog_noise_scale", "read_noise_scale", "drift_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"PCMLikeNoiseModel.{name}: must be finite")
        if self.g_max <= self.g_min:
            raise ValueError(f"PCMLikeNoiseModel.g_max: must be > g_min ({self.g_max} <= {self.g_min})")
        if self.g_min < 0:
            raise ValueError("PCMLikeNoiseModel.g_min: must be >= 0 µS")
        if self.t_read <= 0 or self.t_0 <= 0:
            raise ValueError("PCMLikeNoiseModel.t_read and t_0: must be > 0 seconds")
        for name in ("prog_noise_scale", "read_noise_scale", "drift_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"PCMLikeNoiseModel.{name}: must be >= 0")

    def as_bindings(self):
        from ..rpu_base import inference as inf

        p = inf.PCMNoiseParameters()
        p.prog_coeff = [float(c) for c in self.prog_coeff]
        for name in ("g_max", "g_min", "t_read", "t_0", "prog_noise_scale", "read_noise_scale", "drift_scale"):
            setattr(p, name, float(getattr(self, name)))
        msg = p.validate()
        if msg:
            raise ValueError(f"PCMLikeNoiseModel: {msg}")
        return p


@dataclass
class DriftCompensation:
    """Base of the drift compensations (SPEC §4.3)."""

    kind = "none"


@dataclass
class GlobalDriftCompensation(DriftCompensation):
    """One factor per tile: alpha = ref / mean|y_t| of an identity read-out."""

    kind = "global"


@dataclass
class PerColumnDriftCompensation(DriftCompensation):
    """One factor per output column."""

    kind = "per_column"


@dataclass
class WeightClipParameter:
    """Clipping after each training step: FIXED_VALUE clips to ±fixed_value; LAYER_GAUSSIAN to
    ±sigma·std(W); AVERAGE_CHANNEL_MAX to ± the mean over output rows of max|W_row|."""

    type: WeightClipType = WeightClipType.NONE
    fixed_value: float = 1.0
    sigma: float = 2.5

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class WeightRemapParameter:
    """Remapping after each step: scale weights so max|W| (per layer or per output row)
    equals ``remapped_wmax``; the scale moves to the digital output scale of the layer."""

    type: WeightRemapType = WeightRemapType.NONE
    remapped_wmax: float = 1.0

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class WeightModifierParameter:
    """Forward-copy perturbation during training (SPEC §4.4).

    ``std_dev`` relative to the weight maximum wmax (``assumed_wmax``, or the actual max|W| when
    ``rel_to_actual_wmax``); ``res`` the discretization step as a fraction of wmax (a value > 1
    is a number of steps: step = wmax/res); ``pdrop`` the drop probability; ``coeffs`` of POLY:
    std = std_dev·wmax·(c0 + c1|w|/wmax + c2 (w/wmax)^2).  The distributions are listed in
    :func:`aihw_deploy.simulator.tiles.modifiers.modify_weights`.
    """

    type: WeightModifierType = WeightModifierType.NONE
    std_dev: float = 0.0
    res: float = 0.0
    pdrop: float = 0.0
    rel_to_actual_wmax: bool = True
    assumed_wmax: float = 1.0
    enable_during_test: bool = False
    coeffs: List[float] = field(default_factory=lambda: [0.2, 0.4, 0.0])

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.std_dev < 0:
            raise ValueError("WeightModifierParameter.std_dev: must be >= 0")
        if not 0.0 <= self.pdrop <= 1.0:
            raise ValueError("WeightModifierParameter.pdrop: must be in [0, 1]")
