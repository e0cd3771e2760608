"""Programming and drifting the simulated chips of a model's inference tiles."""

import math
from typing import Optional

from torch import nn


def _inference_tiles(model: nn.Module):
    from ..nn.modules.base import AnalogLayerBase
    from ..simulator.tiles import InferenceTile

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    for m in model.modules():
        if isinstance(m, AnalogLayerBase):
            for t in m._tiles:
                if isinstance(t, InferenceTile):
                    yield t


def program_analog_weights(model: nn.Module, seed: Optional[int] = None) -> int:
    """Programs every InferenceRPUConfig tile of ``model`` (SPEC §4.1-4.2).  With ``seed``,
    tile i uses ``seed + i`` (same seed -> same chip); else each tile's own seed.
    Returns the number of tiles programmed."""
    n = 0
    for i, t in enumerate(_inference_tiles(model)):
        t.program(None if seed is None else int(seed) + i)
        n += 1
    return n


def drift_analog_weights(model: nn.Module, t_inference: float = 0.0) -> int:
    """Applies drift and read noise for ``t_inference`` seconds after programming to every
    inference tile (programming first those that are not programmed yet)."""
    t = float(t_inference)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"drift_analog_weights: t_inference must be a finite number of seconds >= 0, got {t_inference!r}")
    n = 0
    for tile in _inference_tiles(model):
        tile.drift(t)
        n += 1
    return n
