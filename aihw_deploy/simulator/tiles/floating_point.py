"""Floating-point tile: exact products through rpucuda (perfect IO), exact SGD."""

from torch import Tensor
import torch

from .. import cuda, rpu_base
from ..parameters import IOParameters
from .base import TileBase


class FloatingPointTile(TileBase):
    """Exact tile; the weight is an ordinary parameter trained by any optimizer."""

    config_name = "FloatingPointRPUConfig"

    def __init__(self, out_size: int, in_size: int, rpu_config, analog_bias: bool = False):
        super().__init__(out_size, in_size, rpu_config, analog_bias)
        self._compile()

    def _compile(self) -> None:
        self._io = IOParameters(is_perfect=True, out_noise=0.0).as_bindings()
        self._mapping = self.rpu_config.mapping.as_bindings()

    def __getstate__(self):
        d = self.__dict__.copy()
        d.pop("_io")
        d.pop("_mapping")
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._compile()
        self._register()

    def forward(self, x: Tensor) -> Tensor:
        if self.on_cuda:
            return cuda.io_mvm(self.weight.detach(), x, self._io, self._mapping)
        out = torch.empty(x.shape[0], self.out_size)
        rpu_base.tiles.io_mvm(self.weight.detach(), x, out, io=self._io, mapping=self._mapping)
        return out

    def backward(self, d: Tensor) -> Tensor:
        if self.on_cuda:
            return cuda.io_mvm(self.weight.detach(), d, self._io, self._mapping, bound_management=False,
                               transposed=True)
        out = torch.empty(d.shape[0], self.weight.shape[1])
        rpu_base.tiles.io_mvm(self.weight.detach(), d, out, io=self._io, mapping=self._mapping,
                              bound_management=False, transposed=True)
        return out
