from .base import AnalogContainerMixin, AnalogLayerBase
from .container import AnalogSequential
from .conv import AnalogConv1d, AnalogConv2d, AnalogConv3d
from .linear import AnalogLinear

__all__ = ["AnalogLayerBase", "AnalogContainerMixin", "AnalogLinear", "AnalogConv1d", "AnalogConv2d",
           "AnalogConv3d", "AnalogSequential"]
