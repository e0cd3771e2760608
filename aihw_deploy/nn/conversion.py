"""Converting torch models to analog ones and back."""

import copy

import torch
from torch import nn

from .modules.base import AnalogLayerBase
from .modules.container import AnalogSequential
from .modules.conv import AnalogConv1d, AnalogConv2d, AnalogConv3d
from .modules.linear import AnalogLinear

_TO_ANALOG = {nn.Conv1d: AnalogConv1d, nn.Conv2d: AnalogConv2d, nn.Conv3d: AnalogConv3d}
_TO_DIGITAL = {AnalogConv1d: nn.Conv1d, AnalogConv2d: nn.Conv2d, AnalogConv3d: nn.Conv3d}


def _analog_of(m: nn.Module, rpu_config):
    if type(m) is nn.Linear:
        a = AnalogLinear(m.in_features, m.out_features, m.bias is not None, rpu_config=copy.deepcopy(rpu_config))
    elif type(m) in _TO_ANALOG:
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ValueError(f"convert_to_analog: {type(m).__name__} with padding={m.padding!r}/"
                             f"padding_mode={m.padding_mode!r} is not supported (use integer zero padding)")
        a = _TO_ANALOG[type(m)](m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                m.groups, m.bias is not None, rpu_config=copy.deepcopy(rpu_config))
    else:
        return None
    a.set_weights(m.weight.detach(), None if m.bias is None else m.bias.detach())
    a.train(m.training)
    return a


def convert_to_analog(module: nn.Module, rpu_config=None, inplace: bool = False) -> nn.Module:
    """Replaces every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` by its analog twin (weights copied).
    An ``nn.Sequential`` root becomes an :class:`AnalogSequential`."""
    if not inplace:
        module = copy.deepcopy(module)
    single = _analog_of(module, rpu_config)
    if single is not None:
        return single
    for name, child in list(module.named_children()):
        setattr(module, name, convert_to_analog(child, rpu_config, inplace=True))
    if type(module) is nn.Sequential:
        seq = AnalogSequential(*module.children())
        seq.train(module.training)
        return seq
    return module


def convert_to_digital(module: nn.Module, inplace: bool = False) -> nn.Module:
    """Replaces analog layers by torch layers with the current (tile) weights."""
    if not inplace:
        module = copy.deepcopy(module)
    if isinstance(module, AnalogLayerBase):
        w, b = module.get_weights()
        if isinstance(module, AnalogLinear):
            d = nn.Linear(module.in_features, module.out_features, b is not None)
        else:
            d = _TO_DIGITAL[type(module)](module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                          module.padding, module.dilation, module.groups, b is not None)
        with torch.no_grad():
            d.weight.copy_(w)
            if b is not None:
                d.bias.copy_(b)
        d.train(module.training)
        return d
    for name, child in list(module.named_children()):
        setattr(module, name, convert_to_digital(child, inplace=True))
    if type(module) is AnalogSequential:
        return nn.Sequential(*module.children())
    return module
