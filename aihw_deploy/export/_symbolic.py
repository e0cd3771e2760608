"""What an analog layer's forward records while ``torch.onnx.export(dynamo=True)`` traces it:
one ``ai.aihw::AnalogMatMul``/``AnalogConv`` node (``torch.onnx.ops.symbolic``) whose inputs are
the layer input, the *reference* weights (the chip is programmed from them in the kernel), the
digital bias and whose attributes come from the tiles (``_attributes.layer_attributes``)."""

import contextlib
import threading
from typing import Any, Dict, Iterator, Optional

import torch
from torch import Tensor

from ..ops import conv_output_size
from ._attributes import DOMAIN, DOMAIN_VERSION, ExportError, conv_attributes, layer_attributes

LAYER_KEY = "aihw.layer"  # node metadata: qualified module name of the layer


class _Context(threading.local):
    def __init__(self) -> None:
        self.names: Dict[int, str] = {}
        self.t_inference: Optional[float] = None
        self.active = False


_CTX = _Context()


@contextlib.contextmanager
def export_context(model: torch.nn.Module, t_inference: Optional[float]) -> Iterator[None]:
    """Layer names and the ``t_inference`` override for the layers' symbolic forwards."""
    _CTX.names = {id(m): (name or type(m).__name__) for name, m in model.named_modules()}
    _CTX.t_inference = t_inference
    _CTX.active = True
    try:
        yield
    finally:
        _CTX.names, _CTX.t_inference, _CTX.active = {}, None, False


def _reference_weight(layer: Any) -> Tensor:
    """The tiles' reference weights [M, cols] as a fresh constant (an initializer in ONNX)."""
    tiles = layer._tiles
    w = torch.cat([t.weight.detach() for t in tiles], 0) if len(tiles) > 1 else tiles[0].weight.detach()
    return w.clone()


def _bias_and_scaling(layer: Any, m: int):
    """(node bias [m], digital scale [m] or None, digital bias after the scale or None)."""
    tiles = layer._tiles
    remap = getattr(layer.rpu_config, "remap", None)
    scaling = None
    if remap is not None and remap.type.name != "NONE":
        scaling = torch.cat([t.out_scaling for t in tiles]).clone()
    bias = layer.bias
    if scaling is None and bias is not None:
        return bias, None, None
    # The node always gets a bias input: the fallback function's body adds it unconditionally.
    return torch.zeros(m), scaling, bias


def _metadata(layer: Any) -> Dict[str, str]:
    return {LAYER_KEY: _CTX.names.get(id(layer), type(layer).__name__)}


def linear_symbolic(layer: Any, x: Tensor) -> Tensor:
    attrs = layer_attributes(layer, _CTX.t_inference)
    w = _reference_weight(layer)
    if layer._tiles[0].analog_bias:
        x = torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], -1)
    m = w.shape[0]
    bias, scaling, bias_after = _bias_and_scaling(layer, m)
    y = torch.onnx.ops.symbolic(f"{DOMAIN}::AnalogMatMul", (x, w, bias), attrs, dtype=torch.float32,
                                shape=(*x.shape[:-1], m), version=DOMAIN_VERSION, metadata_props=_metadata(layer))
    if scaling is not None:
        y = y * scaling
        if bias_after is not None:
            y = y + bias_after
    return y


def conv_symbolic(layer: Any, x: Tensor) -> Tensor:
    if layer._tiles[0].analog_bias:
        raise ExportError(f"{layer._layer_name()}: a convolution with an analog bias (mapping.digital_bias=False) "
                          "has no AnalogConv equivalent; use a digital bias to export it")
    attrs = layer_attributes(layer, _CTX.t_inference)
    attrs.update(conv_attributes(layer))
    w = _reference_weight(layer).reshape(layer._torch_weight_shape())
    m = w.shape[0]
    bias, scaling, bias_after = _bias_and_scaling(layer, m)
    size = conv_output_size(x.shape[2:], layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    y = torch.onnx.ops.symbolic(f"{DOMAIN}::AnalogConv", (x, w, bias), attrs, dtype=torch.float32,
                                shape=(x.shape[0], m, *size), version=DOMAIN_VERSION, metadata_props=_metadata(layer))
    if scaling is not None:
        shape = (1, -1) + (1,) * len(layer.kernel_size)
        y = y * scaling.reshape(shape)
        if bias_after is not None:
            y = y + bias_after.reshape(shape)
    return y
