"""Common parts of the Python tiles: weights as an ``nn.Parameter``, device handling, state."""

import weakref
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import cuda as _cuda
from ..cuda import CudaError  # noqa: F401  (re-exported)


# id(weight parameter) -> weak reference to its tile (checked for identity on lookup).
_TILE_OF_PARAM: Dict[int, "weakref.ref"] = {}


def tile_of(param: Any) -> Optional["TileBase"]:
    """The tile whose weight is ``param``, or None for a digital parameter."""
    ref = _TILE_OF_PARAM.get(id(param))
    tile = ref() if ref is not None else None
    return tile if tile is not None and tile.weight is param else None


def _new_seed() -> int:
    # Drawn from torch's generator so that torch.manual_seed makes models reproducible.
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())


class TileBase:
    """A layer's crossbar: weights ``[out_size, in_size]`` (plus one column for an analog bias).

    Tensor shapes: ``forward`` x ``[N, in_size]`` -> ``[N, out_size]``; ``backward``
    d ``[N, out_size]`` -> ``[N, in_size]``.
    """

    config_name = ""

    def __init__(self, out_size: int, in_size: int, rpu_config: Any, analog_bias: bool = False):
        if not isinstance(out_size, int) or out_size <= 0:
            raise ValueError(f"{type(self).__name__}: out_size must be a positive int, got {out_size!r}")
        if not isinstance(in_size, int) or in_size <= 0:
            raise ValueError(f"{type(self).__name__}: in_size must be a positive int, got {in_size!r}")
        self.out_size = out_size
        self.in_size = in_size
        self.analog_bias = analog_bias
        self.rpu_config = rpu_config
        self.device = torch.device("cpu")
        cols = in_size + (1 if analog_bias else 0)
        bound = 1.0 / max(1, in_size) ** 0.5
        self.weight = nn.Parameter(torch.empty(out_size, cols).uniform_(-bound, bound))
        self._register()
        self.seed = _new_seed()
        self.call = 0

    def _register(self) -> None:
        # Lets the optimizer find the tile of a parameter (weakly: tiles die with their layer).
        _TILE_OF_PARAM[id(self.weight)] = weakref.ref(self)

    # -- weights -----------------------------------------------------------------------------
    def get_weights(self) -> Tuple[Tensor, Optional[Tensor]]:
        """Returns ``(weight [out, in], bias [out] or None)`` (copies, on the CPU)."""
        w = self.weight.detach().cpu().clone()
        if self.analog_bias:
            return w[:, :-1].contiguous(), w[:, -1].contiguous()
        return w, None

    def set_weights(self, weight: Tensor, bias: Optional[Tensor] = None) -> None:
        """Sets ``weight [out, in]`` (and the analog ``bias [out]``)."""
        weight = torch.as_tensor(weight, dtype=torch.float32)
        if tuple(weight.shape) != (self.out_size, self.in_size):
            raise ValueError(f"set_weights: weight must have shape ({self.out_size}, {self.in_size}), "
                             f"got {tuple(weight.shape)}")
        if not torch.isfinite(weight).all():
            raise ValueError("set_weights: weight contains NaN or Inf")
        with torch.no_grad():
            if self.analog_bias:
                b = torch.zeros(self.out_size) if bias is None else torch.as_tensor(bias, dtype=torch.float32).reshape(-1)
                if b.numel() != self.out_size:
                    raise ValueError(f"set_weights: bias must have {self.out_size} values, got {b.numel()}")
                self.weight.data.copy_(torch.cat([weight.cpu(), b.cpu()[:, None]], 1))
            else:
                self.weight.data.copy_(weight)
        self._weights_changed()

    def _weights_changed(self) -> None:
        """Hook: the weight parameter was written from outside."""

    def next_call(self) -> int:
        c = self.call
        self.call += 1
        return c

    # -- compute ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, d: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    #: True for tiles that apply a pulsed update themselves from the (x, d) pairs of
    #: :meth:`pending_update`; False for tiles trained through a gradient on ``weight``.
    collects_updates = False

    def pending_update(self, x: Tensor, d: Tensor) -> bool:
        """Called by the autograd function with the (x, d) pair; True if the tile will apply
        the update itself (pulsed tiles) instead of a gradient on ``weight``."""
        return False

    def post_update_step(self) -> None:
        """Called by the optimizer after each step (clip/remap, weight sync)."""

    # -- devices -----------------------------------------------------------------------------
    def to(self, device: Any) -> "TileBase":
        """Moves the tile (weights and every other tensor it holds) to ``device`` ("cpu" or a
        CUDA device).  CUDA needs a CUDA build of rpucuda and a GPU, else :class:`CudaError`."""
        device = self.check_device(device)
        if self.weight.device != device:
            with torch.no_grad():
                self.weight.data = self.weight.data.to(device)
                if self.weight.grad is not None:
                    self.weight.grad = self.weight.grad.to(device)
        self._moved(device)
        return self

    def check_device(self, device: Any) -> torch.device:
        """The canonical ``torch.device`` for ``device``, or a clear error if tiles cannot go there."""
        device = torch.device(device)
        if device.type == "cuda":
            _cuda.require(f"{type(self).__name__}.to({device})")
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
        elif device.type != "cpu":
            raise ValueError(f"{type(self).__name__}.to: unsupported device {device} (use 'cpu' or 'cuda')")
        return device

    def _moved(self, device: torch.device) -> None:
        """Hook: the weight parameter is now on ``device``; move everything else there."""
        self.device = device

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def cuda(self, device: Any = None) -> "TileBase":
        return self.to("cuda" if device is None else device)

    def cpu(self) -> "TileBase":
        return self.to("cpu")

    # -- state -------------------------------------------------------------------------------
    def get_state(self) -> Dict[str, Any]:
        """Plain values and tensors describing everything but the weight parameter."""
        return {"seed": int(self.seed), "call": int(self.call), "shape": [self.out_size, self.in_size],
                "analog_bias": bool(self.analog_bias)}

    def set_state(self, state: Dict[str, Any]) -> None:
        if list(state.get("shape", [])) != [self.out_size, self.in_size]:
            raise ValueError(f"{type(self).__name__}: checkpoint tile has shape {state.get('shape')}, "
                             f"this tile is [{self.out_size}, {self.in_size}]")
        if bool(state.get("analog_bias", False)) != self.analog_bias:
            raise ValueError(f"{type(self).__name__}: checkpoint analog_bias differs from this layer's")
        self.seed = int(state["seed"])
        self.call = int(state["call"])
