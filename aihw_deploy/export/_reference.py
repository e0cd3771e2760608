"""The PyTorch model that computes what an exported ONNX model computes with the op library for
a given ``seed`` / ``t_inference`` input (for checks and tests)."""

import copy
from typing import Optional

from torch import nn

from ..simulator.tiles import InferenceTile
from ._onnx import analog_layers


def reference_model(model: nn.Module, seed: Optional[int] = None, t_inference: Optional[float] = None) -> nn.Module:
    """A copy of ``model`` (eval mode) whose next forward equals the first onnxruntime run (with
    the op library) of ``to_onnx(model, ...)`` fed with ``seed`` (>= 0) and ``t_inference``.

    ``t_inference``: programmed tiles are drifted to that time.  ``seed``: each layer's tiles
    draw their noise from ``(seed ^ seed of the layer's first tile, call 0)``, as the ONNX node.
    """
    ref = copy.deepcopy(model)
    ref.eval()
    for _, layer in analog_layers(ref):
        tiles = layer._tiles
        if t_inference is not None:
            for t in tiles:
                if isinstance(t, InferenceTile) and t.programmed is not None:
                    t.drift(float(t_inference))
        if seed is not None and seed >= 0:
            derived = int(seed) ^ int(tiles[0].seed)
            for t in tiles:
                t.seed = derived
                t.call = 0
                native = getattr(t, "_native", None)
                if native is not None:
                    native.set_generator(derived, 0)
    return ref
