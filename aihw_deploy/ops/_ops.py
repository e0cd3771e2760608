"""``torch.ops.aihw.analog_mvm`` / ``torch.ops.aihw.analog_conv``: the analog forward of inference
as ``torch.library`` custom ops backed by rpucuda's ``io_mvm`` (the same function as the
inference tile and the onnxruntime kernel), with fake kernels for ``torch.export``,
``torch.onnx.export(dynamo=True)`` and TorchScript tracing.

The ops are pure: all state (the tile's generator position ``call``, programmed/drifted chip
weights, drift-compensation ``alpha``) comes in as arguments, so a traced graph holds one node
per analog layer and the caller advances the tile's call counter outside the graph.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..simulator import cuda as _cuda
from ..simulator import rpu_base
from ._encoding import IO_FIELDS, io_bindings, mapping_bindings

__all__ = ["analog_mvm", "analog_conv", "is_tracing"]


def is_tracing() -> bool:
    """True inside ``torch.export`` / ``torch.compile`` / ``torch.onnx.export`` / ``torch.jit.trace``."""
    if torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None:
        if getattr(compiler, "is_compiling", lambda: False)():
            return True
        if getattr(compiler, "is_exporting", lambda: False)():
            return True
    return bool(torch.onnx.is_in_onnx_export())


def _check_common(op: str, x: Tensor, weight: Tensor, bias: Optional[Tensor], io: Sequence[float],
                  mapping: Sequence[int]) -> None:
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != torch.float32:
            raise TypeError(f"{op}: {name} must be float32, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if x.device.type == "cuda":
        _cuda.require(op)
    elif x.device.type != "cpu":
        raise ValueError(f"{op}: unsupported device {x.device} (rpucuda runs on the CPU and, in CUDA builds, CUDA)")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D [M, K], got shape {tuple(weight.shape)}")
    if len(io) != len(IO_FIELDS):
        raise ValueError(f"{op}: io must have {len(IO_FIELDS)} values, got {len(io)}")
    if len(mapping) != 2:
        raise ValueError(f"{op}: mapping must be [max_input_size, max_output_size], got {list(mapping)}")


def _mvm(x2d: Tensor, weight: Tensor, alpha: Optional[Tensor], io, mapping, seed: int, call: int,
         bias: Optional[Tensor] = None) -> Tensor:
    """io_mvm of the rows of x2d, plus an optional digital bias [M]."""
    if x2d.is_cuda:
        if x2d.shape[0] == 0:
            return torch.empty(0, weight.shape[0], device=x2d.device)
        a = None if alpha is None else alpha.to(x2d.device).contiguous()
        y = _cuda.io_mvm(weight, x2d, io, mapping, alpha=a, seed=int(seed), call=int(call))
        return y if bias is None else y + bias
    out = torch.empty(x2d.shape[0], weight.shape[0])
    if x2d.shape[0] == 0:
        return out
    # (the bias on rpucuda's pool: see the binding)
    rpu_base.tiles.io_mvm(weight, x2d, out, io=io, mapping=mapping,
                          alpha=None if alpha is None else alpha.contiguous(), seed=int(seed), call=int(call),
                          bias=None if bias is None else bias.detach().contiguous())
    return out


# -- analog_mvm ------------------------------------------------------------------------------------
def analog_mvm_eager(x: Tensor, weight: Tensor, bias: Optional[Tensor], alpha: Optional[Tensor], io: List[float],
                     mapping: List[int], seed: int, call: int) -> Tensor:
    """``y = io_mvm(weight, x) (+ bias)``: the analog product of one layer.

    Args:
        x: float32 ``[*, K]`` (leading dimensions are flattened into rows).
        weight: float32 ``[M, K]`` tile weights (chip weights after programming and drift, or
            the reference weights of an unprogrammed tile).
        bias: optional float32 ``[M]`` digital bias added after the analog product.
        alpha: optional drift-compensation factor, ``[1]`` or ``[M]``.
        io: the forward ``IOParameters`` encoded by :func:`aihw_deploy.ops.encode_io`.
        mapping: ``[max_input_size, max_output_size]``.
        seed, call: generator key and call index of the per-call noise.

    Returns: float32 ``[*, M]``.
    """
    _check_common("aihw::analog_mvm", x, weight, bias, io, mapping)
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"aihw::analog_mvm: x must be [*, {weight.shape[1]}], got shape {tuple(x.shape)}")
    m = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (m,):
        raise ValueError(f"aihw::analog_mvm: bias must be [{m}], got shape {tuple(bias.shape)}")
    lead = x.shape[:-1]
    y = _mvm(x.reshape(-1, weight.shape[1]).contiguous(), weight.contiguous(), alpha,
             io_bindings(tuple(float(v) for v in io)), mapping_bindings(tuple(int(v) for v in mapping)), seed, call,
             bias)
    return y.reshape(*lead, m)


# The op as torch.export / torch.compile / ONNX export see it; eager callers outside tracing may call
# analog_mvm_eager itself (the same function, without the dispatcher's ~50 us per call).
analog_mvm = torch.library.custom_op("aihw::analog_mvm", mutates_args=())(analog_mvm_eager)


@analog_mvm.register_fake
def _analog_mvm_fake(x, weight, bias, alpha, io, mapping, seed, call):
    torch._check(x.shape[-1] == weight.shape[1], lambda: "aihw::analog_mvm: x and weight sizes differ")
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# -- analog_conv -----------------------------------------------------------------------------------
def conv_output_size(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                     dilation: Sequence[int]) -> List[int]:
    return [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)]


def analog_conv_eager(x: Tensor, weight: Tensor, bias: Optional[Tensor], alpha: Optional[Tensor], io: List[float],
                      mapping: List[int], kernel_size: List[int], stride: List[int], padding: List[int],
                      dilation: List[int], groups: int, analog_bias: bool, seeds: List[int],
                      calls: List[int]) -> Tensor:
    """Convolution (1, 2 or 3 spatial dims) as im2col + one analog product per group tile (on the
    CPU in one pass, see ``_conv_cpu``).

    Args:
        x: float32 ``[N, C, *spatial]``.
        weight: float32 ``[M, C/groups * prod(kernel_size) (+1 with analog_bias)]``: the group
            tiles' weights stacked (group g = rows ``g*M/groups .. (g+1)*M/groups``), columns in
            the im2col order (channel, k1, k2, ...).
        bias: optional float32 ``[M]`` digital bias.
        alpha: optional ``[groups, 1]`` or ``[groups, M/groups]`` drift-compensation factors.
        analog_bias: each row of the unfolded input gets a trailing 1 (bias column in the array).
        seeds, calls: per group tile.

    Returns: float32 ``[N, M, *out_spatial]``.
    """
    return _analog_conv(x, weight, bias, alpha, io, mapping, kernel_size, stride, padding, dilation, groups,
                        analog_bias, seeds, calls)[0]


def _analog_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], alpha: Optional[Tensor], io: List[float],
                 mapping: List[int], kernel_size: List[int], stride: List[int], padding: List[int],
                 dilation: List[int], groups: int, analog_bias: bool, seeds: List[int], calls: List[int],
                 check_finite: bool = False) -> Tuple[Tensor, bool]:
    """analog_conv_eager, and with ``check_finite`` whether x has no NaN or Inf (on the CPU found in
    the pass that reads the input anyway): ``(y, finite)``."""
    from ..nn.modules.conv import im2col  # lazy: aihw_deploy.nn imports this module

    op = "aihw::analog_conv"
    _check_common(op, x, weight, bias, io, mapping)
    d = len(kernel_size)
    if d not in (1, 2, 3) or not (len(stride) == len(padding) == len(dilation) == d):
        raise ValueError(f"{op}: kernel_size/stride/padding/dilation must all have 1, 2 or 3 entries")
    if x.dim() != d + 2:
        raise ValueError(f"{op}: x must be [N, C, {', '.join('*' * d)}], got shape {tuple(x.shape)}")
    if groups < 1 or len(seeds) != groups or len(calls) != groups:
        raise ValueError(f"{op}: need groups >= 1 and one seed and call per group (groups={groups})")
    m = weight.shape[0]
    c = x.shape[1]
    if m % groups or c % groups:
        raise ValueError(f"{op}: {m} output and {c} input channels are not divisible by groups={groups}")
    cg, mg = c // groups, m // groups
    cols = cg * math.prod(kernel_size) + (1 if analog_bias else 0)
    if weight.shape[1] != cols:
        raise ValueError(f"{op}: weight must have {cols} columns for {cg} channels per group and kernel "
                         f"{list(kernel_size)}, got {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (m,):
        raise ValueError(f"{op}: bias must be [{m}], got shape {tuple(bias.shape)}")
    if alpha is not None and (alpha.dim() != 2 or alpha.shape[0] != groups):
        raise ValueError(f"{op}: alpha must be [groups, 1] or [groups, M/groups], got shape {tuple(alpha.shape)}")
    io_b = io_bindings(tuple(float(v) for v in io))
    map_b = mapping_bindings(tuple(int(v) for v in mapping))
    if not x.is_cuda:
        return _conv_cpu(x, weight, bias, alpha, io_b, map_b, kernel_size, stride, padding, dilation, groups,
                         analog_bias, seeds, calls, check_finite)
    finite = bool(torch.isfinite(x).all()) if check_finite else True
    batch = x.shape[0]
    k, st, p, dl = tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation)
    outs = []
    size = None
    for g in range(groups):
        xg = x[:, g * cg:(g + 1) * cg] if groups > 1 else x
        col, size = im2col(xg, k, st, p, dl)
        if analog_bias:
            col = torch.cat([col, torch.ones(col.shape[0], 1, dtype=col.dtype, device=col.device)], 1)
        wg = weight[g * mg:(g + 1) * mg].contiguous()
        outs.append(_mvm(col.contiguous(), wg, None if alpha is None else alpha[g], io_b, map_b, seeds[g], calls[g]))
    y = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
    if bias is not None:
        y = y + bias
    y = y.reshape(batch, *size, m)
    return y.permute(0, d + 1, *range(1, d + 1)).contiguous(), finite


def _conv_cpu(x, weight, bias, alpha, io_b, map_b, kernel_size, stride, padding, dilation, groups, analog_bias,
              seeds, calls, check_finite=False) -> Tuple[Tensor, bool]:
    """rpucuda's io_conv: im2col + io_mvm per group without the unfolded input in memory, written
    straight into [N, M, *out] (the same values bit for bit); (y, whether x is finite)."""
    d, m = len(kernel_size), weight.shape[0]
    for i in range(d):
        span = (kernel_size[i] - 1) * dilation[i] + 1
        if x.shape[2 + i] + 2 * padding[i] < span:
            raise ValueError(f"input spatial size {x.shape[2 + i]} (after padding) is smaller than the kernel span {span}")
    y = torch.empty(x.shape[0], m, *conv_output_size(x.shape[2:], kernel_size, stride, padding, dilation))
    if y.numel() == 0:
        return y, (bool(torch.isfinite(x).all()) if check_finite else True)
    finite = rpu_base.tiles.io_conv(weight.contiguous(), x.contiguous(), y, io_b, map_b, list(kernel_size),
                                    list(stride), list(padding), list(dilation), groups, analog_bias,
                                    None if alpha is None else alpha.contiguous(), [int(v) for v in seeds],
                                    [int(v) for v in calls], bias=None if bias is None else bias.detach().contiguous(),
                                    check_finite=check_finite)
    return y, finite


analog_conv = torch.library.custom_op("aihw::analog_conv", mutates_args=())(analog_conv_eager)  # (see analog_mvm)


@analog_conv.register_fake
def _analog_conv_fake(x, weight, bias, alpha, io, mapping, kernel_size, stride, padding, dilation, groups,
                      analog_bias, seeds, calls):
    size = conv_output_size(x.shape[2:], kernel_size, stride, padding, dilation)
    return x.new_empty((x.shape[0], weight.shape[0], *size))


# -- autograd: straight-through product (eval-mode gradients, e.g. saliency through a traced graph) --
def _mvm_setup(ctx, inputs, output):
    x, weight, bias, alpha, io, *_ = inputs
    ctx.save_for_backward(x, weight, alpha)
    ctx.out_scale = float(io[IO_FIELDS.index("out_scale")])
    ctx.has_bias = bias is not None


def _mvm_backward(ctx, grad):
    x, weight, alpha = ctx.saved_tensors
    g = grad * ctx.out_scale
    if alpha is not None:
        g = g * alpha
    grad_x = g @ weight
    grad_w = g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
    grad_b = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
    return grad_x, grad_w, grad_b, None, None, None, None, None


analog_mvm.register_autograd(_mvm_backward, setup_context=_mvm_setup)
