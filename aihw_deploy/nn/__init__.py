"""PyTorch layer: analog modules (aihwkit-compatible names)."""

from . import conversion
from .conversion import convert_to_analog, convert_to_digital
from .modules import AnalogConv1d, AnalogConv2d, AnalogConv3d, AnalogLayerBase, AnalogLinear, AnalogSequential

__all__ = ["AnalogLinear", "AnalogConv1d", "AnalogConv2d", "AnalogConv3d", "AnalogSequential",
           "AnalogLayerBase", "convert_to_analog", "convert_to_digital", "conversion"]
