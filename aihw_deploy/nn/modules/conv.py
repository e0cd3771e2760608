"""AnalogConv1d/2d/3d: convolution as an im2col product on analog tiles."""

import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..functions import AnalogFunction
from ...ops import is_tracing
from ...simulator import rpu_base
from .base import AnalogLayerBase

IntOrTuple = Union[int, Tuple[int, ...]]


def _tuple(v: IntOrTuple, n: int, name: str, minimum: int) -> Tuple[int, ...]:
    t = (v,) * n if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(t) != n or any(not isinstance(i, int) or isinstance(i, bool) or i < minimum for i in t):
        raise ValueError(f"{name}: expected an int >= {minimum} or a tuple of {n} such ints, got {v!r}")
    return t


class _Unfold(torch.autograd.Function):
    """x [N, C, *S] -> columns [N * prod(L), C * prod(kernel) (+1)] (rpucuda's im2col); the
    gradient is its adjoint col2im."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel, stride, padding, dilation, ones_column: bool) -> Tensor:  # type: ignore[override]
        ctx.geometry = (list(kernel), list(stride), list(padding), list(dilation))
        ctx.x_shape = x.shape
        return torch.from_numpy(rpu_base.tiles.im2col(x.contiguous(), *ctx.geometry, ones_column=ones_column))

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty(ctx.x_shape)
            # the summation order of the torch im2col it replaces (F.unfold for 2-d, Tensor.unfold
            # per dimension otherwise): the same gradients bit for bit
            order = "fold" if len(ctx.geometry[0]) == 2 else "unfold"
            rpu_base.tiles.col2im(grad.contiguous(), grad_x, *ctx.geometry, order=order)
        return grad_x, None, None, None, None, None


def _unfold_torch(x: Tensor, kernel: Tuple[int, ...], stride: Tuple[int, ...], padding: Tuple[int, ...],
                  dilation: Tuple[int, ...]) -> Tensor:
    """The same columns from torch operations (for tensors rpucuda's CPU im2col cannot read: CUDA)."""
    d = len(kernel)
    if d == 2:
        cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, C*k, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    pad = []
    for p in reversed(padding):
        pad += [p, p]
    if any(padding):
        x = F.pad(x, pad)
    for i in range(d):
        x = x.unfold(2 + i, (kernel[i] - 1) * dilation[i] + 1, stride[i])
        if dilation[i] > 1:
            x = x[..., :: dilation[i]]
    n, c = x.shape[:2]
    perm = [0] + list(range(2, 2 + d)) + [1] + list(range(2 + d, 2 + 2 * d))
    return x.permute(*perm).reshape(n * math.prod(x.shape[2:2 + d]), c * math.prod(kernel))


def im2col(x: Tensor, kernel: Tuple[int, ...], stride: Tuple[int, ...], padding: Tuple[int, ...],
           dilation: Tuple[int, ...], ones_column: bool = False) -> Tuple[Tensor, Tuple[int, ...]]:
    """x [N, C, *S] -> columns [N * prod(L), C * prod(kernel) (+1 with ones_column)] and the output
    size L; row (n, *position), column (channel, *kernel offset), padding reads 0.  Differentiable."""
    d = len(kernel)
    for i in range(d):
        span = (kernel[i] - 1) * dilation[i] + 1
        if x.shape[2 + i] + 2 * padding[i] < span:
            raise ValueError(f"input spatial size {x.shape[2 + i]} (after padding) is smaller than the kernel span {span}")
    out_size = tuple((x.shape[2 + i] + 2 * padding[i] - (kernel[i] - 1) * dilation[i] - 1) // stride[i] + 1
                     for i in range(d))
    if x.device.type == "cpu":
        return _Unfold.apply(x, kernel, stride, padding, dilation, ones_column), out_size
    cols = _unfold_torch(x, kernel, stride, padding, dilation)
    if ones_column:
        cols = torch.cat([cols, torch.ones(cols.shape[0], 1, dtype=cols.dtype, device=cols.device)], 1)
    return cols, out_size


class _AnalogConvNd(AnalogLayerBase):
    _dims = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple, stride: IntOrTuple = 1,
                 padding: IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1, bias: bool = True,
                 rpu_config=None):
        super().__init__()
        name = type(self).__name__
        for arg, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: {arg} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        n = self._dims
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, n, f"{name}.kernel_size", 1)
        self.stride = _tuple(stride, n, f"{name}.stride", 1)
        self.padding = _tuple(padding, n, f"{name}.padding", 0)
        self.dilation = _tuple(dilation, n, f"{name}.dilation", 1)
        in_size = in_channels // groups * math.prod(self.kernel_size)
        self._setup_tiles(out_channels // groups, in_size, bias, rpu_config, groups=groups)

    def _layer_name(self) -> str:
        return f"{type(self).__name__}(in_channels={self.in_channels})"

    def _torch_weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        n = self._dims
        if x.dim() != n + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self._layer_name()}: expected input [N, {self.in_channels}, {', '.join('*' * n)}], "
                             f"got shape {tuple(x.shape)}")
        if self._op_route():
            return self._op_forward(x)
        batch = x.shape[0]
        cg = self.in_channels // self.groups
        outs = []
        size = None
        for g in range(self.groups):
            xg = x[:, g * cg:(g + 1) * cg] if self.groups > 1 else x
            tile = self._tiles[g]
            # (the analog bias column comes with the unfolding: no copy of the columns)
            cols, size = im2col(xg, self.kernel_size, self.stride, self.padding, self.dilation, tile.analog_bias)
            outs.append(AnalogFunction.apply(cols, tile.weight, tile))
        y = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        if self.bias is not None:
            y = y + self.bias
        y = y.reshape(batch, *size, self.out_channels)
        return y.permute(0, n + 1, *range(1, n + 1))

    def _op_forward(self, x: Tensor) -> Tensor:
        """Eval / tracing forward: ``torch.ops.aihw.analog_conv`` (ONNX: ``ai.aihw::AnalogConv``;
        floating-point tiles: ``F.convNd``, a standard ONNX Conv)."""
        n = self._dims
        if torch.onnx.is_in_onnx_export() and not self._is_digital():
            from ...export._symbolic import conv_symbolic

            return conv_symbolic(self, x)
        if self._is_digital():
            w, b = self._digital_weight_bias()
            conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
            return conv(x, w.reshape(self._torch_weight_shape()), b, self.stride, self.padding, self.dilation,
                        self.groups)
        args = self._op_arguments(is_tracing())
        weight = torch.cat([a["weight"] for a in args], 0) if len(args) > 1 else args[0]["weight"]
        alpha = None
        if args[0]["alpha"] is not None:
            alpha = torch.stack([a["alpha"].reshape(-1) for a in args], 0)
        scaling = None
        if args[0]["out_scaling"] is not None:
            scaling = torch.cat([a["out_scaling"] for a in args]) if len(args) > 1 else args[0]["out_scaling"]
        y = torch.ops.aihw.analog_conv(x, weight, self.bias if scaling is None else None, alpha, args[0]["io"],
                                       args[0]["mapping"], list(self.kernel_size), list(self.stride),
                                       list(self.padding), list(self.dilation), self.groups,
                                       self._tiles[0].analog_bias, [a["seed"] for a in args],
                                       [a["call"] for a in args])
        if scaling is not None:
            shape = (1, -1) + (1,) * n
            y = y * scaling.reshape(shape)
            if self.bias is not None:
                y = y + self.bias.reshape(shape)
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self._has_bias}, "
                f"rpu_config={type(self.rpu_config).__name__}")


class AnalogConv1d(_AnalogConvNd):
    """1-d convolution on analog tiles; input ``[N, C_in, L]`` -> ``[N, C_out, L_out]``."""

    _dims = 1


class AnalogConv2d(_AnalogConvNd):
    """2-d convolution on analog tiles; input ``[N, C_in, H, W]`` -> ``[N, C_out, H_out, W_out]``."""

    _dims = 2


class AnalogConv3d(_AnalogConvNd):
    """3-d convolution on analog tiles; input ``[N, C_in, D, H, W]`` -> ``[N, C_out, D', H', W']``."""

    _dims = 3
