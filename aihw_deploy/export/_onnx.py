"""``to_onnx``: an analog model as an ONNX model with ``ai.aihw`` custom nodes.

Route: ``torch.onnx.export(dynamo=True)`` traces the model with ``torch.export``; while it does,
each analog layer emits its node with ``torch.onnx.ops.symbolic`` (``_symbolic.py``), so the
node gets exactly the contract's inputs (reference weights as an initializer) and attributes
(IO pipeline, mapping, noise model, generator positions), and digital layers become standard
ONNX operators.  The result is then finished here: node and weight names from the layers,
optional ``seed``/``t_inference`` graph inputs, the model-local fallback functions, metadata,
and ``onnx.checker`` (full check) before an atomic write.
"""

import contextlib
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from .. import __version__
from ..simulator.configs import FloatingPointRPUConfig, config_to_dict
from ._attributes import DOMAIN, ExportError, layer_attributes, summary
from ._fallback import MIN_OPSET, functions_for
from ._io import PathLike, atomic_write, write_bytes
from ._symbolic import LAYER_KEY, export_context

DEFAULT_OPSET = 20
SEED_INPUT = "seed"
T_INPUT = "t_inference"


# -- model state -------------------------------------------------------------------------------------
def analog_layers(model: nn.Module) -> List[Tuple[str, Any]]:
    from ..nn.modules.base import AnalogLayerBase

    return [(name, m) for name, m in model.named_modules() if isinstance(m, AnalogLayerBase)]


def _counters(model: nn.Module) -> List[Tuple[Any, int]]:
    out = []
    for _, layer in analog_layers(model):
        for t in layer._tiles:
            native = getattr(t, "_native", None)
            out.append((t, int(native.call_index) if native is not None else int(t.call)))
    return out


def _restore_counters(saved: List[Tuple[Any, int]]) -> None:
    for t, call in saved:
        native = getattr(t, "_native", None)
        if native is not None:
            native.set_generator(t.seed, call)
        else:
            t.call = call


@contextlib.contextmanager
def traced_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd, and the tiles' call counters as they were, for tracing."""
    was = model.training
    saved = _counters(model)
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        _restore_counters(saved)
        model.train(was)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences the exporters' progress output and warnings (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def root_cause(exc: BaseException) -> str:
    """First line of the innermost cause of an exporter's exception (ANSI colours removed)."""
    import re

    seen = set()
    while id(exc) not in seen and (exc.__cause__ is not None or exc.__context__ is not None):
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, ExportError):
        raise exc
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# -- arguments -----------------------------------------------------------------------------------
def check_model_and_input(model: Any, example_input: Any, fn: str) -> Tuple[Tensor, ...]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not all(isinstance(a, Tensor) for a in args):
        raise TypeError(f"{fn}: example_input must be a tensor (or a tuple of tensors)")
    for a in args:
        if a.dtype != torch.float32:
            raise TypeError(f"{fn}: example_input must be float32, got {a.dtype}")
        if a.dim() == 0 or a.shape[0] == 0:
            raise ValueError(f"{fn}: example_input needs a batch dimension of size >= 1, got shape {tuple(a.shape)}")
    for name, layer in analog_layers(model):
        for t in layer._tiles:
            if getattr(t, "device", torch.device("cpu")).type != "cpu":
                raise ExportError(f"{fn}: layer {name!r} is on {t.device}; move the model to the CPU to export it")
    return args


def dynamic_batch_args(args: Tuple[Tensor, ...], dynamic_batch: bool):
    """(trace args, dynamic_shapes): a batch of 1 is doubled so that torch.export keeps it symbolic."""
    if not dynamic_batch:
        return args, None
    args = tuple(torch.cat([a, a]) if a.shape[0] == 1 else a for a in args)
    batch = torch.export.Dim("batch")
    return args, tuple({0: batch} for _ in args)


def _opset(opset: Optional[int]) -> int:
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset: expected an int >= {MIN_OPSET}, got {opset!r}")
    return opset


# -- finishing the ONNX model ---------------------------------------------------------------------
def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [_decode(i) for i in v]
    return v


def node_attributes(node: onnx.NodeProto) -> Dict[str, Any]:
    """A node's attributes as Python values (strings decoded)."""
    return {a.name: _decode(helper.get_attribute_value(a)) for a in node.attribute}


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    return node_attributes(node).get(name, default)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for init in graph.initializer:
        if init.name == old:
            init.name = new
    for n in graph.node:
        for i, v in enumerate(n.input):
            if v == old:
                n.input[i] = new
        for i, v in enumerate(n.output):
            if v == old:
                n.output[i] = new
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name == old:
            vi.name = new


def _as_initializer(graph: onnx.GraphProto, name: str, what: str, layer: str) -> None:
    """Makes sure ``name`` is an initializer (the kernel programs the chip from it at creation)."""
    if any(i.name == name for i in graph.initializer):
        return
    for k, n in enumerate(graph.node):
        if n.op_type == "Constant" and n.domain == "" and list(n.output) == [name]:
            value = _attr(n, "value")
            if value is None:
                break
            t = onnx.TensorProto()
            t.CopyFrom(value)
            t.name = name
            graph.initializer.append(t)
            del graph.node[k]
            return
    raise ExportError(f"layer {layer!r}: the {what} of its ai.aihw node is computed in the graph, not a constant")


def _uses(graph: onnx.GraphProto, name: str) -> int:
    return sum(list(n.input).count(name) for n in graph.node)


def _scalar_input(graph: onnx.GraphProto, name: str, dtype: int, value: np.ndarray) -> None:
    """A scalar graph input with a default value (an initializer of the same name)."""
    graph.input.append(helper.make_tensor_value_info(name, dtype, []))
    graph.initializer.append(numpy_helper.from_array(value, name))


def finish_model(proto: onnx.ModelProto, model: nn.Module, *, opset: int, seed: Optional[int],
                 t_inference: Optional[float], fallback: bool) -> onnx.ModelProto:
    graph = proto.graph
    names = {n for n in (list(i.name for i in graph.initializer) + [o for nd in graph.node for o in nd.output])}
    layers = dict(analog_layers(model))
    nodes = [n for n in graph.node if n.domain == DOMAIN]
    info: Dict[str, Dict[str, Any]] = {}
    for n in nodes:
        layer = next((p.value for p in n.metadata_props if p.key == LAYER_KEY), None) or n.name
        n.name = layer
        _as_initializer(graph, n.input[1], "weight", layer)
        if len(n.input) > 2 and n.input[2]:
            _as_initializer(graph, n.input[2], "bias", layer)
        for slot, suffix in ((1, "weight"), (2, "bias")):
            old = n.input[slot]
            new = f"{layer}.{suffix}" if slot == 1 or old.startswith(("zeros", "val_", "clone", "view")) else old
            if slot == 2 and new != old:
                new = f"{layer}.zero_bias"
            if new != old and new not in names and _uses(graph, old) == 1:
                _rename(graph, old, new)
                names.add(new)
        if layer in layers:
            info[layer] = summary(layers[layer], node_attributes(n))
            info[layer]["op"] = n.op_type
    # Drop the exporter's bulky per-node trace metadata (paths of the Python sources).
    for n in graph.node:
        keep = [(p.key, p.value) for p in n.metadata_props if not p.key.startswith(("pkg.torch.onnx.stack_trace",
                                                                                    "pkg.torch.onnx.fx_node"))]
        del n.metadata_props[:]
        for k, v in keep:
            n.metadata_props.add(key=k, value=v)

    # Plain names for a single input / output (the exporter names them after FX nodes).
    for values, plain in ((graph.input, "input"), (graph.output, "output")):
        if len(values) == 1 and values[0].name != plain and plain not in names:
            _rename(graph, values[0].name, plain)
            names.add(plain)

    # Optional runtime inputs.  ``seed``: default -1 = no seed (each kernel continues its own call
    # sequence); a seed >= 0 makes every run reproducible.
    new_nodes: List[onnx.NodeProto] = []
    if nodes:
        _scalar_input(graph, SEED_INPUT, TensorProto.INT64, np.array(-1 if seed is None else seed, dtype=np.int64))
        for n in nodes:
            # Each node's stream: (seed XOR its first tile seed, call 0): distinct across layers;
            # tile seeds are >= 0, so a negative seed stays negative ("no seed").
            key = f"{n.name}.seed_key"
            derived = f"{n.name}.seed"
            tile_seed = int((_attr(n, "seeds") or [0])[0])
            new_nodes.append(helper.make_node("Constant", [], [key],
                                              value=numpy_helper.from_array(np.array(tile_seed, np.int64), key)))
            new_nodes.append(helper.make_node("BitwiseXor", [SEED_INPUT, key], [derived], name=f"{n.name}/seed"))
            _set_input(n, 3, derived)
    pcm = [n for n in nodes if _attr(n, "noise_model", "none") == "pcm"]
    if pcm:
        ts = {float(_attr(n, "t_inference", 0.0)) for n in pcm}
        if t_inference is not None or len(ts) == 1:
            t = float(t_inference) if t_inference is not None else ts.pop()
            _scalar_input(graph, T_INPUT, TensorProto.FLOAT, np.array(t, dtype=np.float32))
            for n in pcm:
                _set_input(n, 4, T_INPUT)
        else:
            warnings.warn("layers were drifted to different times: the model gets no t_inference input "
                          "(each node keeps its own t_inference attribute)")
    for k, nd in enumerate(new_nodes):
        graph.node.insert(k, nd)

    if fallback:
        proto.functions.extend(functions_for(proto, opset))
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(DOMAIN, 1))

    meta = {
        "aihw_deploy.version": __version__,
        "aihw_deploy.fallback": "true" if fallback else "false",
        "aihw_deploy.seed": "none" if seed is None else str(int(seed)),
        "aihw_deploy.analog_layers": json.dumps(info, sort_keys=True),
    }
    for name, layer in layers.items():
        if not isinstance(layer.rpu_config, FloatingPointRPUConfig):
            meta[f"aihw_deploy.rpu_config.{name}"] = json.dumps(config_to_dict(layer.rpu_config), sort_keys=True)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **meta})
    proto.doc_string = f"Exported by aihw-deploy {__version__}: analog layers as {DOMAIN} custom operators."
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # pragma: no cover - an exporter bug
        raise ExportError(f"the exported model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return proto


def _set_input(node: onnx.NodeProto, slot: int, name: str) -> None:
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = name


# -- public ----------------------------------------------------------------------------------------
def export_onnx_model(model: nn.Module, example_input: Any, *, opset: Optional[int] = None, dynamic_batch: bool = True,
                      seed: Optional[int] = None, t_inference: Optional[float] = None,
                      fallback: bool = True) -> onnx.ModelProto:
    """The finished ONNX model of :func:`to_onnx`, in memory."""
    args = check_model_and_input(model, example_input, "to_onnx")
    opset = _opset(opset)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"to_onnx: seed must be an int in [0, 2**63) or None, got {seed!r}")
    if t_inference is not None:
        if isinstance(t_inference, bool) or not isinstance(t_inference, (int, float)) or \
                not math.isfinite(t_inference) or t_inference < 0:
            raise ValueError(f"to_onnx: t_inference must be a finite number of seconds >= 0, got {t_inference!r}")
        t_inference = float(t_inference)
    # Fail early, with the layer's name, on what the ONNX operators cannot express.
    for name, layer in analog_layers(model):
        if not isinstance(layer.rpu_config, FloatingPointRPUConfig):
            try:
                layer_attributes(layer, t_inference)
            except ExportError as exc:
                raise ExportError(f"layer {name!r}: {exc}") from None
            if hasattr(layer, "kernel_size") and layer._tiles[0].analog_bias:
                raise ExportError(f"layer {name!r}: a convolution with an analog bias (mapping.digital_bias=False) "
                                  "has no AnalogConv equivalent; use a digital bias to export it")
    trace_args, dyn = dynamic_batch_args(args, dynamic_batch)
    with traced_eval(model), export_context(model, t_inference), quiet():
        try:
            program = torch.onnx.export(model, trace_args, dynamo=True, opset_version=opset, dynamic_shapes=dyn,
                                        verbose=False, optimize=True)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {root_cause(exc)}") from exc
        proto = program.model_proto
    return finish_model(proto, model, opset=opset, seed=seed, t_inference=t_inference, fallback=fallback)


def to_onnx(model: nn.Module, example_input: Any, path: PathLike, *, opset: Optional[int] = None,
            dynamic_batch: bool = True, seed: Optional[int] = None, t_inference: Optional[float] = None,
            fallback: bool = True) -> Path:
    """Exports ``model`` (in eval mode) to an ONNX file at ``path``.

    Analog layers with ``InferenceRPUConfig`` or ``SingleRPUConfig`` become ``ai.aihw``
    ``AnalogMatMul``/``AnalogConv`` nodes (``ort_ops/README.md``): the reference weights as an
    initializer, the digital bias, attributes from the RPU config and the tiles' state (seeds,
    call offsets, program seeds; ``noise_model="pcm"`` iff the tiles are programmed).
    ``FloatingPointRPUConfig`` layers and digital modules become standard ONNX operators.

    Args:
        model: the model; its mode and the tiles' call counters are left as they were.
        example_input: float32 tensor ``[N, ...]`` (or a tuple of them) of the model's input.
        path: output file; written atomically (nothing is left behind on failure).
        opset: default ONNX opset (default 20, at least 18).
        dynamic_batch: the first dimension of every input is symbolic (``"batch"``).
        seed: default of the model's int64 scalar input ``seed``.  A run with ``seed >= 0`` draws
            each node's per-call noise from ``(seed ^ its first tile seed, call 0)``: the same
            seed gives the same output.  ``None`` (default -1, "no seed"): each node continues its
            tiles' call counters from export time, run after run, as PyTorch would.
        t_inference: seconds after programming (overrides the tiles' current time).  Models with
            programmed layers get a float scalar input ``t_inference`` with this default.
        fallback: attach the model-local functions so that onnxruntime without the op library
            runs the model (deterministic, noise-free forward).

    Returns: the path written.  Raises :class:`ExportError` (with the layer's name) if the model
    cannot be exported.
    """
    proto = export_onnx_model(model, example_input, opset=opset, dynamic_batch=dynamic_batch, seed=seed,
                              t_inference=t_inference, fallback=fallback)
    try:
        data = proto.SerializeToString()
    except ValueError as exc:
        raise ExportError(f"the model is too large to serialize as one ONNX file ({exc})") from exc
    return atomic_write(path, write_bytes(data))
