"""``aihw-export``: export an analog model to ONNX (``ai.aihw`` ops), ``.pt2`` or TorchScript,
and inspect exported ONNX files.

    aihw-export MODEL -o OUT --input-shape 1,64 [--format onnx|pt2|torchscript] [--weights W]
                [--opset N] [--seed S] [--t-inference T] [--no-fallback] [--static-batch] [--check]
    aihw-export inspect OUT.onnx

MODEL is a ``torch.save(model)`` file (a pickled module: load only files you trust) or
``package.module:factory`` (a function returning the module; ``--weights`` is then a
``state_dict`` file).  Exit status: 0 success, 2 usage error, 1 failure (one-line reason).
"""

import argparse
import importlib
import json
import os
import sys
from typing import List, Optional, Sequence

PROG = "aihw-export"
FORMATS = ("onnx", "pt2", "torchscript")


class _Failure(Exception):
    """A failure with a one-line reason (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: exit 2 with one line
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def _export_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Export an analog model (aihw-deploy) to ONNX with ai.aihw custom "
                                       "operators, a torch.export program (.pt2) or TorchScript.",
                epilog=f"Inspect an exported model: {PROG} inspect OUT.onnx")
    p.add_argument("model", metavar="MODEL", help="torch.save(model) file, or package.module:factory")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (written atomically)")
    p.add_argument("--weights", metavar="FILE", help="state_dict file loaded into the model")
    p.add_argument("--input-shape", metavar="SHAPE", help="example input shape, e.g. 1,64 (first dim: batch)")
    p.add_argument("--format", choices=FORMATS, help="output format (default: from OUT's suffix, else onnx)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 20, at least 18)")
    p.add_argument("--seed", type=int, help="default of the ONNX model's seed input (reproducible noise)")
    p.add_argument("--t-inference", type=float, metavar="SECONDS",
                   help="seconds after programming (default: the tiles' current time)")
    p.add_argument("--no-fallback", action="store_true",
                   help="omit the fallback functions (the model then needs the op library)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to that of --input-shape")
    p.add_argument("--check", action="store_true",
                   help="run the ONNX export in onnxruntime with and without the op library and compare with PyTorch")
    return p


def _inspect_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} inspect", description="Table of the ai.aihw nodes of an exported ONNX model.")
    p.add_argument("path", metavar="FILE.onnx")
    return p


def _shape(text: str, parser: argparse.ArgumentParser) -> List[int]:
    try:
        dims = [int(t) for t in text.replace("x", ",").split(",") if t.strip()]
    except ValueError:
        parser.error(f"--input-shape: expected comma-separated positive ints such as 1,64, got {text!r}")
    if not dims or any(d < 1 for d in dims):
        parser.error(f"--input-shape: expected comma-separated positive ints such as 1,64, got {text!r}")
    return dims


def _format(args, parser) -> str:
    if args.format:
        return args.format
    ext = os.path.splitext(args.output)[1].lower()
    return {".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}.get(ext, "onnx")


def _load_model(spec: str, weights: Optional[str]):
    import torch
    from torch import nn

    if os.path.exists(spec):
        try:
            obj = torch.load(spec, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise _Failure(f"cannot load {spec!r}: {_line(exc)}") from exc
        if isinstance(obj, dict):
            raise _Failure(f"{spec!r} holds a state_dict, not a model: give package.module:factory and "
                           f"--weights {spec}")
    elif ":" in spec and not spec.endswith(":"):
        mod_name, _, fn_name = spec.rpartition(":")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(mod_name)
        except Exception as exc:
            raise _Failure(f"cannot import {mod_name!r}: {_line(exc)}") from exc
        factory = getattr(module, fn_name, None)
        if not callable(factory):
            raise _Failure(f"{mod_name!r} has no callable {fn_name!r}")
        try:
            obj = factory()
        except Exception as exc:
            raise _Failure(f"{spec}() failed: {_line(exc)}") from exc
    else:
        raise _Failure(f"no such file: {spec!r} (MODEL is a torch.save(model) file or package.module:factory)")
    if not isinstance(obj, nn.Module):
        raise _Failure(f"{spec!r} is a {type(obj).__name__}, not a torch.nn.Module")
    if weights is not None:
        if not os.path.exists(weights):
            raise _Failure(f"no such file: {weights!r}")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise _Failure(f"cannot load weights {weights!r}: {_line(exc)}") from exc
        if not isinstance(state, dict):
            raise _Failure(f"{weights!r} is not a state_dict")
        try:
            obj.load_state_dict(state)
        except Exception as exc:
            raise _Failure(f"weights do not fit the model: {_line(exc)}") from exc
    return obj


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check(model, x, path: str, seed: Optional[int], t_inference: Optional[float], fallback: bool) -> bool:
    """Prints the deviations of onnxruntime (with / without the library) from PyTorch."""
    import numpy as np
    import torch

    from .export import reference_model
    from .runtime import InferenceSession

    ref = reference_model(model, seed=seed, t_inference=t_inference)
    with torch.no_grad():
        y = ref(x).numpy()
    scale = float(np.abs(y).max()) or 1.0
    ok = True
    print(f"check: input {list(x.shape)}, PyTorch output {list(y.shape)}, max |y| = {scale:.4g}")
    try:
        sess = InferenceSession(path, seed=seed, t_inference=t_inference)
    except FileNotFoundError as exc:
        print(f"  onnxruntime + op library : skipped ({_line(exc)})")
    else:
        d = float(np.abs(sess(x) - y).max())
        good = d <= 1e-5 * scale
        ok &= good
        print(f"  onnxruntime + op library : max |dy| = {d:.3g} ({d / scale:.3g} of max |y|) "
              f"{'ok' if good else 'MISMATCH (> 1e-5 of max |y|)'}")
    if fallback:
        fb = InferenceSession(path, use_library=False)
        d = float(np.abs(fb(x) - y).max())
        print(f"  onnxruntime fallback     : max |dy| = {d:.3g} ({d / scale:.3g} of max |y|) "
              "(noise-free forward on the reference weights: differs by the analog noise)")
    else:
        print("  onnxruntime fallback     : skipped (--no-fallback)")
    return ok


def _run_export(argv: Sequence[str]) -> int:
    parser = _export_parser()
    args = parser.parse_args(argv)
    fmt = _format(args, parser)
    if args.input_shape is None:
        parser.error("--input-shape is required (e.g. --input-shape 1,64)")
    shape = _shape(args.input_shape, parser)
    if fmt != "onnx":
        for flag, given in (("--opset", args.opset is not None), ("--seed", args.seed is not None),
                            ("--t-inference", args.t_inference is not None), ("--no-fallback", args.no_fallback),
                            ("--check", args.check)):
            if given:
                parser.error(f"{flag} applies to --format onnx only")
    if args.opset is not None and args.opset < 18:
        parser.error(f"--opset: at least 18, got {args.opset}")
    if args.seed is not None and args.seed < 0:
        parser.error(f"--seed: expected an int >= 0, got {args.seed}")
    if args.t_inference is not None and not (args.t_inference >= 0 and args.t_inference < float("inf")):
        parser.error(f"--t-inference: expected seconds >= 0, got {args.t_inference}")
    if os.path.isdir(args.output):
        parser.error(f"-o: {args.output!r} is a folder")

    import torch

    from . import export

    model = _load_model(args.model, args.weights)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    try:
        if fmt == "onnx":
            path = export.to_onnx(model, x, args.output, opset=args.opset, dynamic_batch=not args.static_batch,
                                  seed=args.seed, t_inference=args.t_inference, fallback=not args.no_fallback)
        elif fmt == "pt2":
            path = export.to_torch_export(model, x, args.output, dynamic_batch=not args.static_batch)
        else:
            path = export.to_torchscript(model, x, args.output)
    except (export.ExportError, TypeError, ValueError, RuntimeError) as exc:
        raise _Failure(_line(exc)) from exc
    size = os.path.getsize(path)
    print(f"wrote {path} ({fmt}, {size / 1024:.1f} KiB)")
    if args.check:
        if not _check(model, x, str(path), args.seed, args.t_inference, not args.no_fallback):
            raise _Failure("onnxruntime with the op library differs from PyTorch")
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(_fmt(i) for i in v)
    return str(v)


def _run_inspect(argv: Sequence[str]) -> int:
    args = _inspect_parser().parse_args(argv)
    import onnx

    from .export import DOMAIN
    from .export._onnx import node_attributes

    if not os.path.isfile(args.path):
        raise _Failure(f"no such file: {args.path!r}")
    try:
        model = onnx.load(args.path)
    except Exception as exc:
        raise _Failure(f"{args.path!r} is not an ONNX model: {_line(exc)}") from exc
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_param or str(d.dim_value) if (d.dim_param or d.HasField("dim_value")) else "?"
                for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = "[" + ",".join(dims) + "]"
    inits = {i.name: "[" + ",".join(str(d) for d in i.dims) + "]" for i in model.graph.initializer}
    meta = {p.key: p.value for p in model.metadata_props}
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    inputs = [f"{i.name}{shapes.get(i.name, '')}" + (" (default)" if i.name in inits else "")
              for i in model.graph.input]
    outputs = [o.name + shapes.get(o.name, "") for o in model.graph.output]
    print(f"{args.path}: ir {model.ir_version}, opsets {opsets}; aihw-deploy {meta.get('aihw_deploy.version', '?')}")
    print(f"inputs: {', '.join(inputs)}; outputs: {', '.join(outputs)}")
    fns = [f.name for f in model.functions if f.domain == DOMAIN]
    print(f"fallback functions: {', '.join(fns) if fns else 'none (needs the op library)'}")
    rows = []
    for n in model.graph.node:
        if n.domain != DOMAIN:
            continue
        a = node_attributes(n)
        w = inits.get(n.input[1], shapes.get(n.input[1], "?"))
        grid = f"{a.get('max_input_size', '?')}x{a.get('max_output_size', '?')}"
        rows.append([n.name, n.op_type, shapes.get(n.input[0], "?"), w, shapes.get(n.output[0], "?"),
                     a.get("noise_model", "none"), _fmt(a.get("t_inference", 0.0)),
                     _fmt(a.get("out_noise", 0.06)), _fmt(a.get("w_noise", 0.0)),
                     _fmt(a.get("inp_res", "")) + "/" + _fmt(a.get("out_res", "")),
                     str(a.get("noise_management", "")), str(a.get("bound_management", "")), grid,
                     str(a.get("drift_compensation", "none")), _fmt(a.get("call_offsets", []))])
    head = ["node", "op", "input", "weight", "output", "noise", "t_inf", "out_noise", "w_noise", "inp/out_res",
            "nm", "bm", "tile", "drift_comp", "calls"]
    if not rows:
        print("no ai.aihw nodes")
        return 0
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    digital = sorted({n.op_type for n in model.graph.node if n.domain == "" and n.op_type in
                      ("MatMul", "Gemm", "Conv")})
    if digital:
        print(f"digital layers: {', '.join(digital)}")
    if "aihw_deploy.analog_layers" in meta:
        try:
            json.loads(meta["aihw_deploy.analog_layers"])
        except ValueError:
            print("warning: metadata aihw_deploy.analog_layers is not valid JSON")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "inspect":
            return _run_inspect(argv[1:])
        return _run_export(argv)
    except _Failure as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into a program that stopped reading (| head)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:  # pragma: no cover
            pass
        return 1
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:  # anything unexpected: still one line and status 1
        print(f"{PROG}: error: {type(exc).__name__}: {_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
