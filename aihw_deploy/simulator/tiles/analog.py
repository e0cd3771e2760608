"""Analog (pulsed) tile: IO-managed forward/backward and pulsed update in rpucuda."""

from typing import Any, Dict, List, NamedTuple, Tuple, Union

import torch
from torch import Tensor

from .. import cuda, rpu_base
from .base import TileBase


class ConvPair(NamedTuple):
    """A convolution's update pair: x [N, C, *spatial] and d [N * L, out]; the unfolded input is
    made only while the update runs, row block by row block (``AnalogTile.update_conv``)."""

    x: Tensor
    d: Tensor
    geometry: Tuple[List[int], List[int], List[int], List[int]]  # kernel_size, stride, padding, dilation
    ones_column: bool

    def columns(self) -> Tensor:
        return torch.from_numpy(rpu_base.tiles.im2col(self.x.detach().contiguous(), *self.geometry,
                                                      ones_column=self.ones_column))


class AnalogTile(TileBase):
    """Weights live on simulated devices in rpucuda; ``weight`` mirrors them for inspection
    and checkpoints.  The update is applied by :class:`~aihw_deploy.optim.AnalogSGD` from the
    (x, d) pairs collected during backward."""

    config_name = "SingleRPUConfig"

    def __init__(self, out_size: int, in_size: int, rpu_config, analog_bias: bool = False):
        super().__init__(out_size, in_size, rpu_config, analog_bias)
        cols = self.weight.shape[1]
        self._native = rpu_base.tiles.AnalogTile(
            out_size, cols, rpu_config.device.as_bindings(), rpu_config.forward.as_bindings(),
            rpu_config.backward.as_bindings(), rpu_config.update.as_bindings(),
            rpu_config.mapping.as_bindings(), self.seed)
        self._pending: List[Union[Tuple[Tensor, Tensor], ConvPair]] = []
        self._cells = None  # device arrays [out, cols, 6] on the GPU when the tile is there
        self._weights_changed()

    def _weights_changed(self) -> None:
        # The devices clip to their bounds: mirror what the chip really holds.
        self._native.set_weights(self.weight.detach().cpu())
        self.weight.data.copy_(torch.from_numpy(self._native.get_weights()))

    def _moved(self, device: torch.device) -> None:
        was_cuda = self.on_cuda
        super()._moved(device)
        if device.type == "cuda":
            # The weight parameter is the device-side weight matrix; the device-to-device
            # parameters go along (they never change after construction).
            self._cells = torch.from_numpy(self._native.get_device_arrays()).to(device)
        else:
            if was_cuda:
                self._native.set_raw_weights(self.weight.detach().cpu().contiguous())
            self._cells = None
        self._pending = [(x.to(device), d.to(device)) for x, d in self._pending]

    def _next_call(self) -> int:
        # One generator position for CPU and CUDA: the native tile's.
        call = int(self._native.call_index)
        self._native.set_generator(self.seed, call + 1)
        return call

    def forward(self, x: Tensor) -> Tensor:
        if self.on_cuda:
            n = self._native
            return cuda.io_mvm(self.weight.detach(), x, n.forward_io, n.mapping, bound_management=True,
                               seed=self.seed, call=self._next_call())
        out = torch.empty(x.shape[0], self.out_size)
        self._native.forward(x, out)
        return out

    def backward(self, d: Tensor) -> Tensor:
        if self.on_cuda:
            n = self._native
            return cuda.io_mvm(self.weight.detach(), d, n.backward_io, n.mapping, bound_management=False,
                               seed=self.seed, call=self._next_call(), transposed=True)
        out = torch.empty(d.shape[0], self.weight.shape[1])
        self._native.backward(d, out)
        return out

    collects_updates = True

    def pending_update(self, x: Tensor, d: Tensor) -> bool:
        self._pending.append((x, d))
        return True

    def pending_conv_update(self, pair: ConvPair) -> bool:
        """pending_update for a convolution on the CPU, without its unfolded input (ConvPair)."""
        self._pending.append(pair)
        return True

    def apply_update(self, lr: float) -> None:
        """Applies the pulsed update ``W -= lr * sum d^T x`` for the collected pairs (one update
        over all of them)."""
        if not self._pending:
            return
        if len(self._pending) == 1 and isinstance(self._pending[0], ConvPair) and not self.on_cuda:
            p = self._pending.pop()
            self._native_update(lr, lambda: self._native.update_conv(p.x.detach().contiguous(), p.d.contiguous(),
                                                                     *p.geometry, ones_column=p.ones_column))
            return
        pairs = [(p.columns(), p.d) if isinstance(p, ConvPair) else p for p in self._pending]
        if len(pairs) == 1:
            x, d = pairs[0]
        else:
            x = torch.cat([p[0] for p in pairs])
            d = torch.cat([p[1] for p in pairs])
        self._pending.clear()
        if self.on_cuda:
            n = self._native
            cuda.pulsed_update(self.weight.data, x.contiguous(), d.contiguous(), float(lr), n.update_parameters,
                               n.device, self._cells, self.seed, self._next_call())
            return
        self._native_update(lr, lambda: self._native.update(x.contiguous(), d.contiguous()))

    def _native_update(self, lr: float, run) -> None:
        """run() (an update of the CPU tile) at learning rate lr; then weight mirrors the devices."""
        self._native.learning_rate = float(lr)
        run()
        self.weight.data.copy_(torch.from_numpy(self._native.get_weights()))

    def clear_pending(self) -> None:
        self._pending.clear()

    # -- state ---------------------------------------------------------------------------------
    def get_state(self) -> Dict[str, Any]:
        state = super().get_state()
        state["call"] = int(self._native.call_index)
        state["device_arrays"] = torch.from_numpy(self._native.get_device_arrays())
        if self.on_cuda:
            state["weights"] = self.weight.detach().cpu().clone()
        else:
            state["weights"] = torch.from_numpy(self._native.get_weights())
        return state

    def set_state(self, state: Dict[str, Any]) -> None:
        super().set_state(state)
        arrays = torch.as_tensor(state["device_arrays"], dtype=torch.float32).contiguous()
        self._native.set_device_arrays(arrays)
        self._native.set_raw_weights(torch.as_tensor(state["weights"], dtype=torch.float32).contiguous())
        self._native.set_generator(self.seed, self.call)
        self.weight.data.copy_(torch.from_numpy(self._native.get_weights()))
        if self.on_cuda:
            self._cells = torch.from_numpy(self._native.get_device_arrays()).to(self.device)

    def __getstate__(self) -> Dict[str, Any]:
        d = self.__dict__.copy()
        d.pop("_native")
        d["_pending"] = []
        d["_cells"] = None
        d["_native_state"] = self.get_state()
        return d

    def __setstate__(self, d: Dict[str, Any]) -> None:
        native_state = d.pop("_native_state")
        self.__dict__.update(d)
        cfg = self.rpu_config
        self._native = rpu_base.tiles.AnalogTile(
            self.out_size, self.weight.shape[1], cfg.device.as_bindings(), cfg.forward.as_bindings(),
            cfg.backward.as_bindings(), cfg.update.as_bindings(), cfg.mapping.as_bindings(), self.seed)
        self.set_state(native_state)
        self._register()
