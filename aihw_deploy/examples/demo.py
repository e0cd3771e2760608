"""Main demo: train a small analog model on digits and run it on a simulated, drifting chip.

    python -m aihw_deploy.examples.demo [--epochs 30]
"""

import argparse

import torch

from ..simulator.configs import ConstantStepDevice, FloatingPointRPUConfig, InferenceRPUConfig, SingleRPUConfig
from .digits import accuracy, build_mlp, load_digits_split, train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    ap.add_argument("--seed", type=int, default=0)
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
    for label, t in (("1 second", 1.0), ("1 hour", 3600.0), ("1 day", 86400.0), ("1 year", 31536000.0)):
        inference_model.drift_analog_weights(t)
        print(f"  after {label:9s} test accuracy {100 * accuracy(inference_model, xte, yte):6.2f}%")
    print("\nExport to ONNX / onnxruntime: not implemented yet (see README, 'Status').")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
