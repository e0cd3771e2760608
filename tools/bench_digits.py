"""Training wall time on scikit-learn's digits (issue: PyTorch layer, item 6), next to the same
network with torch layers, measured in the same run.

    python tools/bench_digits.py [--repeats 3] [--threads 2] [--epochs 30]

MLP 64-128-10 and the LeNet-style CNN of aihw_deploy.examples.digits, 30 epochs, batch 32,
lr 0.3 (AnalogSGD; torch.optim-compatible for the digital networks).  Each configuration is
trained `repeats` times in interleaved rounds (fresh model, seed 0); reported: test accuracy,
median wall time and its ratio to the digital network of the same shape.
"""

import argparse
import statistics

import torch

from aihw_deploy.examples.digits import accuracy, build_lenet, build_mlp, load_digits_split, train
from aihw_deploy.simulator import set_num_threads
from aihw_deploy.simulator.configs import (ConstantStepDevice, FloatingPointRPUConfig, InferenceRPUConfig,
                                           SingleRPUConfig)

CONFIGS = [
    ("MLP", "digital (torch)", lambda: build_mlp(None, analog=False)),
    ("MLP", "FloatingPointRPUConfig", lambda: build_mlp(FloatingPointRPUConfig())),
    ("MLP", "SingleRPUConfig(ConstantStep)", lambda: build_mlp(SingleRPUConfig(device=ConstantStepDevice()))),
    ("MLP", "InferenceRPUConfig", lambda: build_mlp(InferenceRPUConfig())),
    ("LeNet", "digital (torch)", lambda: build_lenet(None, analog=False)),
    ("LeNet", "InferenceRPUConfig", lambda: build_lenet(InferenceRPUConfig())),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    if args.repeats < 1 or args.epochs < 1 or args.threads < 1:
        ap.error("--repeats, --epochs and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    xtr, ytr, xte, yte = load_digits_split()
    times = {i: [] for i in range(len(CONFIGS))}
    accs = {}
    for r in range(args.repeats):
        for i, (net, name, make) in enumerate(CONFIGS):
            torch.manual_seed(0)
            model = make()
            times[i].append(train(model, xtr, ytr, epochs=args.epochs, batch_size=32))
            accs[i] = accuracy(model, xte, yte)
            print(f"  round {r + 1}/{args.repeats}: {net} {name}: {times[i][-1]:.2f} s", flush=True)
    print(f"\nthreads={args.threads}, {args.epochs} epochs, batch 32; median of {args.repeats} trainings")
    print(f"{'network':7s} {'configuration':32s} {'accuracy':>9s} {'train s':>8s} {'x digital':>10s}")
    digital = {}
    for i, (net, name, _) in enumerate(CONFIGS):
        t = statistics.median(times[i])
        if name.startswith("digital"):
            digital[net] = t
        print(f"{net:7s} {name:32s} {100 * accs[i]:8.2f}% {t:8.2f} {t / digital[net]:10.2f}")


if __name__ == "__main__":
    main()
