"""Behaviour shared by all analog layers: tiles, checkpoints, programming and drift."""

from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import Tensor, nn

from ...ops import encode_io, encode_mapping, is_tracing
from ...simulator import rpu_base
from ...simulator.configs import FloatingPointRPUConfig, config_from_dict, config_to_dict
from ...simulator.tiles import CudaError, FloatingPointTile, InferenceTile, TileBase, tile_class_for
from ..functions import AnalogFunction


def _all_finite(x: Tensor) -> bool:
    # On the CPU through rpucuda's pool: torch.isfinite would wake torch's OpenMP threads, which
    # then spin beside rpucuda's threads in the layer's own computation.
    if x.device.type == "cpu" and x.is_contiguous():
        return rpu_base.tiles.all_finite(x)
    return bool(torch.isfinite(x).all())


class AnalogContainerMixin:
    """Methods for any module that holds analog layers."""

    def analog_tiles(self) -> Iterator[TileBase]:
        """All tiles of the analog layers in this module (depth first)."""
        for m in self.modules():  # type: ignore[attr-defined]
            if isinstance(m, AnalogLayerBase):
                yield from m._tiles

    def analog_layers(self) -> Iterator["AnalogLayerBase"]:
        for m in self.modules():  # type: ignore[attr-defined]
            if isinstance(m, AnalogLayerBase):
                yield m

    def program_analog_weights(self, seed: Optional[int] = None) -> None:
        """Programs every inference tile onto its simulated chip (SPEC §4.1-4.2)."""
        from ...inference.chip import program_analog_weights

        program_analog_weights(self, seed=seed)  # type: ignore[arg-type]

    def drift_analog_weights(self, t_inference: float = 0.0) -> None:
        """Applies drift and read noise for ``t_inference`` seconds after programming."""
        from ...inference.chip import drift_analog_weights

        drift_analog_weights(self, t_inference)  # type: ignore[arg-type]


class AnalogLayerBase(AnalogContainerMixin, nn.Module):
    """Base of AnalogLinear and AnalogConvNd: holds one tile per weight group."""

    def _setup_tiles(self, out_size: int, in_size: int, bias: bool, rpu_config: Any, groups: int = 1) -> None:
        if rpu_config is None:
            rpu_config = FloatingPointRPUConfig()
        tile_cls = tile_class_for(rpu_config)  # raises a clear TypeError for a wrong config
        self.rpu_config = rpu_config
        self.digital_bias = bool(rpu_config.mapping.digital_bias)
        analog_bias = bias and not self.digital_bias
        self._tiles: List[TileBase] = [tile_cls(out_size, in_size, rpu_config, analog_bias) for _ in range(groups)]
        if groups == 1:
            self.weight = self._tiles[0].weight
        else:
            self.group_weights = nn.ParameterList([t.weight for t in self._tiles])
        if bias and self.digital_bias:
            self.bias = nn.Parameter(torch.zeros(out_size * groups))
        else:
            self.register_parameter("bias", None)
        self._has_bias = bias

    def _layer_name(self) -> str:
        return type(self).__name__

    def _tile_product(self, x2d: Tensor, g: int = 0) -> Tensor:
        """x2d [N, in_size] -> [N, out_size] through tile g (autograd-aware)."""
        tile = self._tiles[g]
        if tile.analog_bias:
            x2d = torch.cat([x2d, torch.ones(x2d.shape[0], 1, dtype=x2d.dtype, device=x2d.device)], 1)
        return AnalogFunction.apply(x2d.contiguous(), tile.weight, tile)

    # -- eval / tracing route through torch.ops.aihw ----------------------------------------------
    def _op_route(self, tracing: Optional[bool] = None) -> bool:
        """True when the forward goes through ``torch.ops.aihw`` (one graph node per layer):
        always while tracing (torch.export, torch.onnx.export, torch.jit.trace), and for
        inference tiles in eval mode without autograd.  Training keeps the autograd function.
        (``tracing``: is_tracing() if the caller has it already.)"""
        if is_tracing() if tracing is None else tracing:
            return True
        return not self.training and not torch.is_grad_enabled() and isinstance(self._tiles[0], InferenceTile)

    def _is_digital(self) -> bool:
        return isinstance(self._tiles[0], FloatingPointTile)

    def _digital_weight_bias(self):
        """Floating-point tiles as torch weights: (weight [out, cols], bias [out] or None)."""
        w = torch.cat([t.weight for t in self._tiles], 0) if len(self._tiles) > 1 else self.weight
        if self._tiles[0].analog_bias:
            return w[:, :-1], w[:, -1]
        return w, self.bias

    def _op_arguments(self, tracing: bool) -> List[Dict[str, Any]]:
        """Per tile: the arguments of the analog op (weight, alpha, io, mapping, seed, call,
        out_scaling).  Call counters advance here, outside the op, except while tracing."""
        args = []
        for t in self._tiles:
            if isinstance(t, InferenceTile):
                args.append(t.op_arguments(advance=not tracing))
            else:  # pulsed tile: forward IO of its config, no noise model (its own call counter)
                native = t._native
                call = int(native.call_index)
                if not tracing:
                    native.set_generator(t.seed, call + 1)
                args.append({"weight": t.weight.detach(), "alpha": None, "io": encode_io(t.rpu_config.forward),
                             "mapping": encode_mapping(t.rpu_config.mapping), "seed": int(t.seed), "call": call,
                             "out_scaling": None})
        return args

    def _check_input(self, x: Tensor, finite: bool = True, tracing: Optional[bool] = None) -> None:
        """Type, dtype and device of the input; NaN and Inf too unless ``finite`` is False (a caller
        whose own computation checks them: the CPU convolution, in its pass over the input)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._layer_name()}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise TypeError(f"{self._layer_name()}: input must be float32, got {x.dtype}")
        dev = self._tiles[0].device
        if x.device != dev:
            raise ValueError(f"{self._layer_name()}: input is on {x.device}, but the layer is on {dev} "
                             f"(move one of them: layer.to(x.device) or x.to({str(dev)!r}))")
        if finite and not (is_tracing() if tracing is None else tracing) and x.numel() and not _all_finite(x):
            self._raise_nonfinite()

    def _raise_nonfinite(self):
        raise ValueError(f"{self._layer_name()}: input contains NaN or Inf")

    # -- devices -------------------------------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        """Device/dtype moves (``.cuda()``, ``.to()``, ``.cpu()``): the tiles follow their weight
        parameters.  Tiles compute in float32 on the CPU or, in CUDA builds, on a GPU."""
        try:
            probe = fn(torch.empty(0, device=self._tiles[0].weight.device))
        except (AssertionError, RuntimeError) as e:  # e.g. "Torch not compiled with CUDA enabled"
            if "cuda" in str(e).lower():
                raise CudaError(f"{self._layer_name()}: cannot move to CUDA: {e}") from e
            raise
        if probe.dtype != torch.float32:
            raise TypeError(f"{self._layer_name()}: analog tiles compute in float32; cannot convert to {probe.dtype}")
        target = self._tiles[0].check_device(probe.device)  # CudaError before anything moves
        super()._apply(fn, *args, **kwargs)
        params = [self.weight] if len(self._tiles) == 1 else list(self.group_weights)
        for t, p in zip(self._tiles, params):
            if t.weight is not p:  # a conversion that replaced the parameter object
                t.weight = p
                t._register()
            t._moved(target)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        for t in self._tiles:
            if hasattr(t, "training"):
                t.training = mode
        return self

    # -- weights -------------------------------------------------------------------------------
    def get_weights(self):
        """Returns ``(weight, bias)`` in the layout of the equivalent torch layer (copies)."""
        ws, bs = [], []
        for t in self._tiles:
            w, b = t.get_weights()
            ws.append(w)
            bs.append(b)
        w = torch.cat(ws, 0).reshape(self._torch_weight_shape())
        if self.bias is not None:
            b = self.bias.detach().clone()
        elif bs[0] is not None:
            b = torch.cat(bs)
        else:
            b = None
        return w, b

    def set_weights(self, weight: Tensor, bias: Optional[Tensor] = None) -> None:
        """Sets weights (torch layer layout) and bias."""
        weight = torch.as_tensor(weight, dtype=torch.float32)
        if tuple(weight.shape) != tuple(self._torch_weight_shape()):
            raise ValueError(f"{self._layer_name()}.set_weights: weight must have shape "
                             f"{tuple(self._torch_weight_shape())}, got {tuple(weight.shape)}")
        g = len(self._tiles)
        w2 = weight.reshape(weight.shape[0], -1)
        rows = w2.shape[0] // g
        b = None if bias is None else torch.as_tensor(bias, dtype=torch.float32).reshape(-1)
        if b is not None and b.numel() != weight.shape[0]:
            raise ValueError(f"{self._layer_name()}.set_weights: bias must have {weight.shape[0]} values, got {b.numel()}")
        for i, t in enumerate(self._tiles):
            t.set_weights(w2[i * rows:(i + 1) * rows].contiguous(), None if b is None else b[i * rows:(i + 1) * rows])
        if self.bias is not None and b is not None:
            with torch.no_grad():
                self.bias.copy_(b)

    def _torch_weight_shape(self):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- checkpoints ---------------------------------------------------------------------------
    def get_extra_state(self) -> Dict[str, Any]:
        return {
            "config_type": type(self.rpu_config).__name__,
            "rpu_config": config_to_dict(self.rpu_config),
            "tiles": [t.get_state() for t in self._tiles],
        }

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or "config_type" not in state:
            raise ValueError(f"{self._layer_name()}: checkpoint has no analog tile state")
        mine = type(self.rpu_config).__name__
        if state["config_type"] != mine:
            raise ValueError(f"{self._layer_name()}: checkpoint was saved with {state['config_type']}, "
                             f"this layer uses {mine}")
        if len(state["tiles"]) != len(self._tiles):
            raise ValueError(f"{self._layer_name()}: checkpoint has {len(state['tiles'])} tiles, layer has {len(self._tiles)}")
        cfg = config_from_dict(state["rpu_config"])
        if cfg != self.rpu_config:
            # Rebuild the tiles with the saved configuration (same shapes).
            new_tiles = [type(t)(t.out_size, t.in_size, cfg, t.analog_bias) for t in self._tiles]
            for old, new in zip(self._tiles, new_tiles):
                new.weight = old.weight
                new._register()
            self.rpu_config = cfg
            self._tiles = new_tiles
        for t, s in zip(self._tiles, state["tiles"]):
            t.set_state(s)
        self.train(self.training)
