"""Autograd function that routes a layer's product through its tile."""

import torch
from torch import Tensor


class AnalogFunction(torch.autograd.Function):
    """y = tile.forward(x); backward: dx = tile.backward(d) (IO pipeline of the backward pass),
    dW = d^T x (exact) unless the tile applies a pulsed update itself from (x, d)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, tile) -> Tensor:  # type: ignore[override]
        ctx.tile = tile
        ctx.save_for_backward(x)
        return tile.forward(x)

    @staticmethod
    def backward(ctx, d: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        tile = ctx.tile
        d = d.contiguous()
        grad_x = tile.backward(d) if ctx.needs_input_grad[0] else None
        grad_w = _weight_grad(tile, x, d) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def _weight_grad(tile, x: Tensor, d: Tensor):
    """dW = d^T x (times the tile's gradient scale), or None when the tile applies a pulsed
    update itself from (x, d)."""
    if tile.pending_update(x, d):
        return None
    return _grad_scaled(tile, d).t().mm(x)


def _grad_scaled(tile, d: Tensor) -> Tensor:
    """d times the tile's per-row gradient scale (the remapping's digital scale), if it has one."""
    scale = getattr(tile, "weight_gradient_scale", lambda: None)()
    return d * scale if scale is not None else d


class AnalogConvFunction(torch.autograd.Function):
    """One group tile of a convolution: the rows ``[N * L, out]`` that ``AnalogFunction`` gives for
    the unfolded input ``conv.columns(x)``, computed by ``conv.rows(x, tile)`` without the unfolded
    input in memory (rpucuda's io_conv, the same values).  Backward as ``AnalogFunction``; only
    ``x`` is kept, the unfolded input is built again for the weight gradient or pulsed update, and
    the input gradient is ``conv.input_grad(tile.backward(d))``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, tile, conv) -> Tensor:  # type: ignore[override]
        ctx.tile = tile
        ctx.conv = conv
        ctx.save_for_backward(x)
        return conv.rows(x, tile)

    @staticmethod
    def backward(ctx, d: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        tile, conv = ctx.tile, ctx.conv
        d = d.contiguous()
        grad_x = conv.input_grad(tile.backward(d)) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            if tile.collects_updates:  # pulsed: the tile updates itself at the optimizer step
                tile.pending_conv_update(conv.update_pair(x, d))
            else:  # d^T columns, a few images at a time (never the whole unfolded input)
                grad_w = conv.weight_grad(x, _grad_scaled(tile, d))
        return grad_x, grad_w, None, None
