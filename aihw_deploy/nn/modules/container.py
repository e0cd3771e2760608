"""AnalogSequential."""

from torch import nn

from .base import AnalogContainerMixin


class AnalogSequential(AnalogContainerMixin, nn.Sequential):
    """``nn.Sequential`` with the analog helpers (``analog_tiles()``,
    ``program_analog_weights()``, ``drift_analog_weights()``)."""
