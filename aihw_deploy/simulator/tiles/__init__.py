"""Python tiles over the rpucuda bindings."""

from .analog import AnalogTile
from .base import CudaError, TileBase
from .floating_point import FloatingPointTile
from .inference import InferenceTile

__all__ = ["TileBase", "FloatingPointTile", "AnalogTile", "InferenceTile", "CudaError"]


def tile_class_for(rpu_config):
    """The tile class that implements an RPU config."""
    from ..configs import FloatingPointRPUConfig, InferenceRPUConfig, SingleRPUConfig

    if isinstance(rpu_config, FloatingPointRPUConfig):
        return FloatingPointTile
    if isinstance(rpu_config, SingleRPUConfig):
        return AnalogTile
    if isinstance(rpu_config, InferenceRPUConfig):
        return InferenceTile
    raise TypeError(f"rpu_config: expected FloatingPointRPUConfig, SingleRPUConfig or InferenceRPUConfig, "
                    f"got {type(rpu_config).__name__}")
