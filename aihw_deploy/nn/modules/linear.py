"""AnalogLinear."""

import torch
import torch.nn.functional as F
from torch import Tensor

from ...ops import is_tracing
from ...ops._ops import analog_mvm_eager
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
        tracing = is_tracing()  # (once per call: it asks torch four things)
        self._check_input(x, tracing=tracing)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            got = x.shape[-1] if x.dim() else "a scalar"
            raise ValueError(f"AnalogLinear(in_features={self.in_features}): input has {got} features "
                             f"(shape {tuple(x.shape)})")
        if self._op_route(tracing):
            return self._op_forward(x, tracing)
        lead = x.shape[:-1]
        y = self._tile_product(x.reshape(-1, self.in_features))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def _op_forward(self, x: Tensor, tracing: bool) -> Tensor:
        """Eval / tracing forward: ``torch.ops.aihw.analog_mvm`` (ONNX: ``ai.aihw::AnalogMatMul``;
        floating-point tiles: ``F.linear``, a standard ONNX MatMul/Gemm)."""
        if tracing and torch.onnx.is_in_onnx_export() and not self._is_digital():
            from ...export._symbolic import linear_symbolic

            return linear_symbolic(self, x)
        if self._is_digital():
            return F.linear(x, *self._digital_weight_bias())
        a = self._op_arguments(tracing)[0]
        if self._tiles[0].analog_bias:
            x = torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)], -1)
        scaling = a["out_scaling"]
        # (_op_route: tracing, or no autograd; outside tracing the op's function itself)
        op = torch.ops.aihw.analog_mvm if tracing else analog_mvm_eager
        y = op(x, a["weight"], self.bias if scaling is None else None, a["alpha"], a["io"], a["mapping"], a["seed"],
               a["call"])
        if scaling is not None:
            y = y * scaling
            if self.bias is not None:
                y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self._has_bias}, rpu_config={type(self.rpu_config).__name__}")
