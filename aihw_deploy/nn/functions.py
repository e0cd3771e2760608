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
        grad_w = None
        if ctx.needs_input_grad[1] and not tile.pending_update(x, d):
            scale = getattr(tile, "weight_gradient_scale", lambda: None)()
            grad_w = (d * scale if scale is not None else d).t().mm(x)
        return grad_x, grad_w, None
