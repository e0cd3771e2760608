"""IO, update and mapping parameters (SPEC §1-2), mirrored onto rpucuda's structs."""

from dataclasses import dataclass

from .converter import to_bindings, validate_fields
from .enums import BoundManagementType, NoiseManagementType, PulseType, WeightNoiseType


@dataclass
class IOParameters:
    """Periphery of a forward or backward pass (SPEC §1).

    Resolutions: a value in (0, 1] is a fraction of the full range ``2 * bound``, a value > 1
    a number of steps, a value <= 0 means no quantization.  Weights are in tile units; inputs
    are normalized by noise management.
    """

    is_perfect: bool = False
    inp_bound: float = 1.0
    inp_res: float = 1.0 / (2**7 - 2)
    inp_sto_round: bool = False
    inp_noise: float = 0.0
    out_bound: float = 12.0
    out_res: float = 1.0 / (2**9 - 2)
    out_sto_round: bool = False
    out_noise: float = 0.06
    out_scale: float = 1.0
    w_noise: float = 0.0
    w_noise_type: WeightNoiseType = WeightNoiseType.NONE
    noise_management: NoiseManagementType = NoiseManagementType.ABS_MAX
    bound_management: BoundManagementType = BoundManagementType.ITERATIVE
    nm_thres: float = 0.0
    max_bm_factor: float = 1000.0
    max_bm_res: float = 0.25

    def __post_init__(self) -> None:
        validate_fields(self)

    def as_bindings(self):
        from ..rpu_base import parameters as p

        validate_fields(self)
        return to_bindings(self, p.IOParameters)


@dataclass
class UpdateParameters:
    """Pulsed update (SPEC §2).  ``desired_bl`` is the pulse-train length (1..64)."""

    desired_bl: int = 31
    pulse_type: PulseType = PulseType.STOCHASTIC_COMPRESSED
    update_management: bool = True
    update_bl_management: bool = True
    fixed_bl: bool = True
    sto_round: bool = False

    def __post_init__(self) -> None:
        validate_fields(self)

    def as_bindings(self):
        from ..rpu_base import parameters as p

        validate_fields(self)
        return to_bindings(self, p.UpdateParameters)


@dataclass
class MappingParameter:
    """How a layer maps onto tiles: at most ``max_input_size`` columns and ``max_output_size``
    rows per tile; partial sums of a split layer are added digitally.  ``digital_bias`` adds
    the bias outside the array."""

    max_input_size: int = 512
    max_output_size: int = 512
    digital_bias: bool = True

    def __post_init__(self) -> None:
        validate_fields(self)

    def as_bindings(self):
        from ..rpu_base import parameters as p

        validate_fields(self)
        return to_bindings(self, p.MappingParameter)
