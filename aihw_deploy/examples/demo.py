"""Main demo: train a small analog model on digits, run it on a simulated, drifting chip, export
it to ONNX and run it in onnxruntime with the aihw-deploy op library and without it.

    python -m aihw_deploy.examples.demo [--epochs 30]
"""

import argparse
import os
import tempfile

import torch

from ..simulator.configs import ConstantStepDevice, FloatingPointRPUConfig, InferenceRPUConfig, SingleRPUConfig
from .digits import accuracy, build_mlp, load_digits_split, train

TIMES = (("1 second", 1.0), ("1 hour", 3600.0), ("1 day", 86400.0), ("1 year", 31536000.0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--onnx", metavar="PATH", help="keep the exported ONNX model at PATH (default: a temporary file)")
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error("--epochs must be >= 1")
    xtr, ytr, xte, yte = load_digits_split()
    print(f"digits: {len(xtr)} train / {len(xte)} test samples, MLP 64-128-10, {args.epochs} epochs, batch 32, lr 0.3")
    rows = []
    configs = [("torch nn.Linear (digital)", None), ("FloatingPointRPUConfig", FloatingPointRPUConfig()),
               ("SingleRPUConfig(ConstantStepDevice)", SingleRPUConfig(device=ConstantStepDevice())),
               ("InferenceRPUConfig (HWA training)", InferenceRPUConfig())]
    inference_model = None
    for name, cfg in configs:
        torch.manual_seed(args.seed)
        model = build_mlp(cfg, analog=cfg is not None)
        secs = train(model, xtr, ytr, epochs=args.epochs)
        acc = accuracy(model, xte, yte)
        rows.append((name, acc, secs))
        print(f"  trained {name:38s} test accuracy {100 * acc:6.2f}%   training {secs:6.2f} s", flush=True)
        if isinstance(cfg, InferenceRPUConfig):
            inference_model = model
    print("\nInferenceRPUConfig model programmed onto a simulated PCM chip (global drift compensation):")
    inference_model.eval()
    inference_model.program_analog_weights(seed=args.seed)
    for label, t in TIMES:
        inference_model.drift_analog_weights(t)
        print(f"  after {label:9s} test accuracy {100 * accuracy(inference_model, xte, yte):6.2f}%")
    export_and_run(inference_model, xte, yte, args.onnx)
    return 0


def export_and_run(model, xte, yte, path=None) -> None:
    """Exports the programmed model to ONNX and compares accuracies: PyTorch, onnxruntime with the
    aihw-deploy op library (same chip, same noise: the same numbers), and a stock onnxruntime
    without the library (the model's deterministic fallback functions: no noise, no drift)."""
    import numpy as np

    from ..export import reference_model, to_onnx
    from ..runtime import InferenceSession, library_path

    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = os.path.join(tmp.name, "digits_mlp_hwa.onnx")
    try:
        written = to_onnx(model, xte[:8], path)
        where = "a temporary file (--onnx PATH keeps it)" if tmp is not None else str(written)
        print(f"\nExported to ONNX: {where}, {os.path.getsize(written) / 1024:.0f} KiB, ai.aihw::AnalogMatMul nodes "
              "with fallback functions")
        try:
            lib = library_path()
        except FileNotFoundError as exc:
            lib = None
            print(f"  op library not available: {exc}")
        else:
            print(f"  op library: {lib}")
        y = yte.numpy()

        def acc(out) -> float:
            return float((np.asarray(out).argmax(1) == y).mean())

        fallback = acc(InferenceSession(written, use_library=False)(xte))
        print(f"  {'time':9s} {'PyTorch':>9s} {'onnxruntime + aihw ops':>23s} {'onnxruntime fallback':>21s}")
        for label, t in TIMES:
            ref = reference_model(model, t_inference=t)  # the chip at t, noise counters as exported
            with torch.no_grad():
                a_torch = acc(ref(xte))
            a_lib = f"{100 * acc(InferenceSession(written, t_inference=t)(xte)):22.2f}%" if lib else f"{'n/a':>23s}"
            print(f"  {label:9s} {100 * a_torch:8.2f}% {a_lib} {100 * fallback:20.2f}%")
        print("  (each row: a fresh session fed t_inference and PyTorch on the same chip from the same noise\n"
              "   counters, hence equal; the fallback runs the trained weights without noise or drift, so it does not change)")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
