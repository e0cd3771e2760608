"""AnalogLinear."""

from torch import Tensor

from .base import AnalogLayerBase


class AnalogLinear(AnalogLayerBase):
    """Linear layer on an analog tile: ``y = W x + b``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: whether to add a bias (digital unless ``rpu_config.mapping.digital_bias`` is False).
        rpu_config: FloatingPointRPUConfig (default), SingleRPUConfig or InferenceRPUConfig.

    Shapes: input ``[*, in_features]`` float32 -> output ``[*, out_features]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rpu_config=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"AnalogLinear: {name} must be a positive int, got {v!r}")
        self.in_features = in_features
        self.out_features = out_features
        self._setup_tiles(out_features, in_features, bias, rpu_config)

    def _layer_name(self) -> str:
        return f"AnalogLinear(in_features={self.in_features})"

    def _torch_weight_shape(self):
        return (self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            got = x.shape[-1] if x.dim() else "a scalar"
            raise ValueError(f"AnalogLinear(in_features={self.in_features}): input has {got} features "
                             f"(shape {tuple(x.shape)})")
        lead = x.shape[:-1]
        y = self._tile_product(x.reshape(-1, self.in_features))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self._has_bias}, rpu_config={type(self.rpu_config).__name__}")
