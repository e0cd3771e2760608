"""AnalogSGD: SGD where analog weights are updated by their tiles."""

from typing import Callable, Iterable, List, Optional

import torch
from torch import nn


from ..simulator.tiles.base import tile_of as _tile_of


class AnalogSGD(torch.optim.SGD):
    """Stochastic gradient descent for models with analog layers.

    - ``SingleRPUConfig`` (pulsed) tiles: the update ``W -= lr * d^T x`` is applied by the tile
      with device pulses, from the (x, d) pairs of the last backward pass(es); momentum and
      weight decay do not apply to them.
    - ``FloatingPointRPUConfig`` and ``InferenceRPUConfig`` tiles: the weight is an ordinary
      parameter whose ``.grad`` came from the tile's backward; it gets the plain SGD update
      (then the inference tile's clip/remap).
    - Digital parameters (biases, other layers): plain SGD.

    Learning-rate schedulers work as with ``torch.optim.SGD`` (the group's ``lr`` is used).
    """

    def __init__(self, params: Iterable, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if not isinstance(lr, (int, float)) or lr < 0:
            raise ValueError(f"AnalogSGD: lr must be a number >= 0, got {lr!r}")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)

    def regroup_param_groups(self, model: nn.Module) -> None:
        """Puts the analog weights of ``model`` into their own parameter group (same
        hyper-parameters), as in aihwkit; digital parameters stay in the first group."""
        analog = [p for p in model.parameters() if _tile_of(p) is not None]
        ids = {id(p) for p in analog}
        defaults = {k: v for k, v in self.param_groups[0].items() if k != "params"} if self.param_groups else {}
        digital = [p for g in self.param_groups for p in g["params"] if id(p) not in ids]
        self.param_groups = []
        self.state.clear()
        if digital:
            self.add_param_group({"params": digital, **defaults})
        if analog:
            self.add_param_group({"params": analog, **defaults})

    def _analog_tiles(self) -> List:
        return [t for g in self.param_groups for p in g["params"] if (t := _tile_of(p)) is not None]

    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                tile = _tile_of(p)
                if tile is not None and hasattr(tile, "apply_update"):
                    tile.apply_update(group["lr"])
        super().step()
        for tile in self._analog_tiles():
            tile.post_update_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        for tile in self._analog_tiles():
            if hasattr(tile, "clear_pending"):
                tile.clear_pending()
