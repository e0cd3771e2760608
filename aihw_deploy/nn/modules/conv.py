"""AnalogConv1d/2d/3d: convolution as an im2col product on analog tiles."""

import math
import sys
import threading
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..functions import AnalogConvFunction, AnalogFunction
from ...ops import is_tracing
from ...ops._encoding import io_bindings, mapping_bindings
from ...ops._ops import _analog_conv, conv_output_size
from ...simulator.parameters import IOParameters
from ...simulator.tiles import AnalogTile, FloatingPointTile, InferenceTile
from ...simulator.tiles.analog import ConvPair
from ...simulator import rpu_base
from .base import AnalogLayerBase

IntOrTuple = Union[int, Tuple[int, ...]]


def _tuple(v: IntOrTuple, n: int, name: str, minimum: int) -> Tuple[int, ...]:
    t = (v,) * n if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(t) != n or any(not isinstance(i, int) or isinstance(i, bool) or i < minimum for i in t):
        raise ValueError(f"{name}: expected an int >= {minimum} or a tuple of {n} such ints, got {v!r}")
    return t


class _ColumnsPool:
    """Buffers for the unfolded input of the training path (tens of MB per step), reused: a new
    one every step would fault all its pages in again (milliseconds), and one freed through
    malloc would raise glibc's dynamic mmap threshold, after which smaller freed blocks stay in
    the heap and the peak memory grows.  A buffer is handed out again once nothing but the pool
    refers to it (no tensor shares its memory any more)."""

    _PER_SHAPE = 8

    def __init__(self):
        self._buffers = {}
        self._lock = threading.Lock()

    def take(self, rows: int, cols: int):
        """A float32 array [rows, cols] that nobody else uses, or None when the pool for this shape
        is full and busy (the caller then allocates one of its own)."""
        with self._lock:
            bufs = self._buffers.setdefault((rows, cols), [])
            for i in range(len(bufs)):
                # references: the list, the argument of getrefcount; a tensor made by
                # torch.from_numpy holds one more for as long as its storage lives
                if sys.getrefcount(bufs[i]) == 2:
                    return bufs[i]
            if len(bufs) < self._PER_SHAPE:
                bufs.append(rpu_base.tiles.new_array(rows, cols))
                return bufs[-1]
        return None


_COLUMNS = _ColumnsPool()
_GRAD_CHUNK = 1 << 19  # unfolded-input elements per chunk of the weight gradient (2 MB)


class _Unfold(torch.autograd.Function):
    """x [N, C, *S] -> columns [N * prod(L), C * prod(kernel) (+1)] (rpucuda's im2col); the
    gradient is its adjoint col2im."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel, stride, padding, dilation, ones_column: bool) -> Tensor:  # type: ignore[override]
        ctx.geometry = (list(kernel), list(stride), list(padding), list(dilation))
        ctx.x_shape = x.shape
        return _unfold_cpu(x, ctx.geometry, ones_column)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad_x = _col2im(grad, ctx.x_shape, ctx.geometry) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None, None


class _GroupConv:
    """The product of one group tile of a convolution on the CPU, for AnalogConvFunction: the
    unfolded input (im2col / col2im) and the tile's forward rows by io_conv."""

    def __init__(self, layer: "_AnalogConvNd", x_shape, tile):
        self.x_shape = tuple(x_shape)
        self.geometry = (list(layer.kernel_size), list(layer.stride), list(layer.padding), list(layer.dilation))
        self.ones_column = tile.analog_bias
        self.cols = tile.weight.shape[1]  # unfolded input columns (with an analog bias column)
        self.input_finite = True  # (set by rows(): no NaN or Inf in x)

    def columns(self, x: Tensor) -> Tensor:
        return _unfold_cpu(x, self.geometry, self.ones_column)

    def update_pair(self, x: Tensor, d: Tensor) -> ConvPair:
        """The (x, d) pair of a pulsed update, with the unfolding made during the update."""
        return ConvPair(x.detach(), d, tuple(list(g) for g in self.geometry), self.ones_column)

    def weight_grad(self, x: Tensor, d: Tensor) -> Tensor:
        """d^T columns(x) ([out, cols]) for d [N * L, out], accumulated over chunks of about
        _GRAD_CHUNK elements of the unfolded input, so that it never exists whole (for the
        convolution of a 32x16x32x32 batch that is 19 MB, several times torch's own memory)."""
        n = x.shape[0]
        if n == 0:
            return d.new_zeros(d.shape[1], self.cols)
        per_image = d.shape[0] // n
        step = max(1, _GRAD_CHUNK // max(1, per_image * self.cols))
        grad = None
        for i in range(0, n, step):
            part = d[i * per_image:(i + step) * per_image].t().mm(self.columns(x[i:i + step]))
            grad = part if grad is None else grad.add_(part)
        return grad

    def input_grad(self, grad_cols: Tensor) -> Tensor:
        return _col2im(grad_cols, self.x_shape, self.geometry)

    def rows(self, x: Tensor, tile) -> Tensor:
        """tile.forward(self.columns(x)), with the same side effects (the call counter)."""
        args = _forward_arguments(tile)
        rows = x.shape[0] * math.prod(conv_output_size(x.shape[2:], *self.geometry))
        y = torch.empty(rows, tile.out_size)
        alpha = args["alpha"]
        self.input_finite = rpu_base.tiles.io_conv(
            args["weight"], x.detach().contiguous(), y, args["io"], args["mapping"], *self.geometry, 1,
            tile.analog_bias, None if alpha is None else alpha.reshape(1, -1).contiguous(), [args["seed"]],
            [args["call"]], layout="rows", check_finite=True)
        if args["out_scaling"] is not None:
            y.mul_(args["out_scaling"])
        return y


_PERFECT_IO = IOParameters(is_perfect=True, out_noise=0.0).as_bindings()  # FloatingPointTile's


def _io_conv_supports(tile) -> bool:
    # (exact types: a subclass may compute its forward differently)
    return type(tile) in (InferenceTile, FloatingPointTile, AnalogTile) and not getattr(tile, "on_cuda", False)


def _forward_arguments(tile):
    """What tile.forward passes to io_mvm on the CPU (weights, io, mapping, alpha, seed, call, and
    the digital output scaling applied after it), advancing the tile's call counter as
    tile.forward does (tiles of _io_conv_supports)."""
    if isinstance(tile, InferenceTile):
        a = tile.op_arguments(advance=True)
        return {"weight": a["weight"].contiguous(), "io": io_bindings(tuple(float(v) for v in a["io"])),
                "mapping": mapping_bindings(tuple(int(v) for v in a["mapping"])), "alpha": a["alpha"],
                "seed": a["seed"], "call": a["call"], "out_scaling": a["out_scaling"]}
    if isinstance(tile, FloatingPointTile):
        return {"weight": tile.weight.detach().contiguous(), "io": _PERFECT_IO,
                "mapping": tile.rpu_config.mapping.as_bindings(), "alpha": None, "seed": 0, "call": 0,
                "out_scaling": None}
    if isinstance(tile, AnalogTile):
        n = tile._native
        call = int(n.call_index)
        n.set_generator(n.seed, call + 1)
        return {"weight": n.get_weights(), "io": n.forward_io, "mapping": n.mapping, "alpha": None,
                "seed": int(n.seed), "call": call, "out_scaling": None}
    raise TypeError(f"io_conv: unsupported tile {type(tile).__name__}")


def _unfold_cpu(x: Tensor, geometry, ones_column: bool) -> Tensor:
    """rpucuda's im2col into a pooled buffer (no autograd)."""
    kernel, stride, padding, dilation = geometry
    rows = x.shape[0] * math.prod(conv_output_size(x.shape[2:], kernel, stride, padding, dilation))
    out = _COLUMNS.take(rows, x.shape[1] * math.prod(kernel) + (1 if ones_column else 0))
    return torch.from_numpy(rpu_base.tiles.im2col(x.detach().contiguous(), *geometry, ones_column=ones_column,
                                                  out=out))


def _check_span(x: Tensor, kernel, padding, dilation) -> None:
    for i in range(len(kernel)):
        span = (kernel[i] - 1) * dilation[i] + 1
        if x.shape[2 + i] + 2 * padding[i] < span:
            raise ValueError(f"input spatial size {x.shape[2 + i]} (after padding) is smaller than the kernel span {span}")


def _col2im(grad_cols: Tensor, x_shape, geometry) -> Tensor:
    grad_x = torch.empty(x_shape)
    # the summation order of the torch im2col this replaces (F.unfold for 2-d, Tensor.unfold per
    # dimension otherwise): the same gradients bit for bit
    order = "fold" if len(geometry[0]) == 2 else "unfold"
    rpu_base.tiles.col2im(grad_cols.contiguous(), grad_x, *geometry, order=order)
    return grad_x


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
    _check_span(x, kernel, padding, dilation)
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
        # (on the CPU, io_conv looks for NaN and Inf in its pass over the input: no separate pass)
        tracing = is_tracing()  # (once per call: it asks torch four things)
        route = self._op_route(tracing)
        io_conv_checks = isinstance(x, Tensor) and x.device.type == "cpu" and not tracing and (
            not self._is_digital() if route else all(_io_conv_supports(t) for t in self._tiles))
        self._check_input(x, finite=not io_conv_checks, tracing=tracing)
        n = self._dims
        if x.dim() != n + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self._layer_name()}: expected input [N, {self.in_channels}, {', '.join('*' * n)}], "
                             f"got shape {tuple(x.shape)}")
        if route:
            return self._op_forward(x, tracing)
        batch = x.shape[0]
        cg = self.in_channels // self.groups
        outs = []
        size = None
        for g in range(self.groups):
            xg = x[:, g * cg:(g + 1) * cg] if self.groups > 1 else x
            tile = self._tiles[g]
            if x.device.type == "cpu" and _io_conv_supports(tile):
                # io_conv: the tile's rows without the unfolded input in memory
                size = tuple(conv_output_size(x.shape[2:], self.kernel_size, self.stride, self.padding,
                                              self.dilation))
                _check_span(x, self.kernel_size, self.padding, self.dilation)
                xg = xg.contiguous()
                conv = _GroupConv(self, xg.shape, tile)
                outs.append(AnalogConvFunction.apply(xg, tile.weight, tile, conv))
                if not conv.input_finite:
                    self._raise_nonfinite()
                continue
            # (the analog bias column comes with the unfolding: no copy of the columns)
            cols, size = im2col(xg, self.kernel_size, self.stride, self.padding, self.dilation, tile.analog_bias)
            outs.append(AnalogFunction.apply(cols, tile.weight, tile))
        y = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        if self.bias is not None:
            y = y.add_(self.bias)  # (in place: the product is not kept by autograd)
        y = y.reshape(batch, *size, self.out_channels)
        return y.permute(0, n + 1, *range(1, n + 1))

    def _op_forward(self, x: Tensor, tracing: bool) -> Tensor:
        """Eval / tracing forward: ``torch.ops.aihw.analog_conv`` (ONNX: ``ai.aihw::AnalogConv``;
        floating-point tiles: ``F.convNd``, a standard ONNX Conv)."""
        n = self._dims
        if tracing and torch.onnx.is_in_onnx_export() and not self._is_digital():
            from ...export._symbolic import conv_symbolic

            return conv_symbolic(self, x)
        if self._is_digital():
            w, b = self._digital_weight_bias()
            conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
            return conv(x, w.reshape(self._torch_weight_shape()), b, self.stride, self.padding, self.dilation,
                        self.groups)
        args = self._op_arguments(tracing)
        weight = torch.cat([a["weight"] for a in args], 0) if len(args) > 1 else args[0]["weight"]
        alpha = None
        if args[0]["alpha"] is not None:
            alpha = torch.stack([a["alpha"].reshape(-1) for a in args], 0)
        scaling = None
        if args[0]["out_scaling"] is not None:
            scaling = torch.cat([a["out_scaling"] for a in args]) if len(args) > 1 else args[0]["out_scaling"]
        op_args = (x, weight, self.bias if scaling is None else None, alpha, args[0]["io"], args[0]["mapping"],
                   list(self.kernel_size), list(self.stride), list(self.padding), list(self.dilation), self.groups,
                   self._tiles[0].analog_bias, [a["seed"] for a in args], [a["call"] for a in args])
        if tracing:
            y = torch.ops.aihw.analog_conv(*op_args)
        else:  # (_op_route: no autograd here; the op's own function, without the dispatcher)
            y, finite = _analog_conv(*op_args, check_finite=x.device.type == "cpu")
            if not finite:
                self._raise_nonfinite()
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
