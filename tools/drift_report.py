#!/usr/bin/env python
"""Digits MLP on a simulated PCM chip: accuracy after drift, with and without hardware-aware
training (HWA) and drift compensation.

Trains (a) an MLP 64-128-10 hardware-aware with ``InferenceRPUConfig()`` defaults (AnalogSGD
through the noisy, quantized IO pipeline) and (b) the same MLP in plain torch (``nn.Linear``,
``torch.optim.SGD``) converted to ``InferenceRPUConfig`` layers with ``convert_to_analog``.
Each is evaluated as configured (global drift compensation) and as a copy with the same weights
and ``drift_compensation=None``, at 1 s, 1 h, 1 d, 30 d and 1 y after programming, over
``--repeats`` programmed chips.  Prints the table and writes ``tools/figures/drift_digits.png``.

    python tools/drift_report.py [--repeats 10] [--epochs 30] [--out tools/figures/drift_digits.png]
"""

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from aihw_deploy.examples.digits import accuracy, build_mlp, load_digits_split, train  # noqa: E402
from aihw_deploy.inference import evaluate_drift  # noqa: E402
from aihw_deploy.nn.conversion import convert_to_analog  # noqa: E402
from aihw_deploy.simulator.configs import InferenceRPUConfig  # noqa: E402


def same_weights(model, rpu_config):
    """A copy of the analog MLP ``model`` with ``rpu_config`` layers: same weights, biases and
    tile seeds (so the same IO noise)."""
    copy = build_mlp(rpu_config)
    for src, dst in zip(model.analog_layers(), copy.analog_layers()):
        dst.set_weights(*src.get_weights())
        for ts, td in zip(src._tiles, dst._tiles):
            td.seed = ts.seed
    return copy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10, help="programmed chips per point [10]")
    ap.add_argument("--epochs", type=int, default=30, help="training epochs [30]")
    ap.add_argument("--seed", type=int, default=0, help="training and chip seed [0]")
    ap.add_argument("--out", default=os.path.join(ROOT, "tools", "figures", "drift_digits.png"),
                    help="PNG to write [tools/figures/drift_digits.png]")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    xtr, ytr, xte, yte = load_digits_split()

    torch.manual_seed(args.seed)
    hwa = build_mlp(InferenceRPUConfig())
    t_hwa = train(hwa, xtr, ytr, epochs=args.epochs, seed=args.seed)

    torch.manual_seed(args.seed)
    digital = build_mlp(analog=False)
    t_dig = train(digital, xtr, ytr, epochs=args.epochs, seed=args.seed,
                  optimizer=torch.optim.SGD(digital.parameters(), lr=0.3))
    plain = convert_to_analog(digital, InferenceRPUConfig())

    no_comp = InferenceRPUConfig(drift_compensation=None)
    models = {
        "HWA, global compensation": hwa,
        "HWA, no compensation": same_weights(hwa, no_comp),
        "no HWA, global compensation": plain,
        "no HWA, no compensation": same_weights(plain, no_comp),
    }
    print(f"digits: {xtr.shape[0]} train / {xte.shape[0]} test samples; MLP 64-128-10")
    print(f"  HWA training (InferenceRPUConfig defaults, AnalogSGD): {t_hwa:.1f} s; "
          f"accuracy before programming {accuracy(hwa, xte, yte) * 100:.2f}%")
    print(f"  plain torch training (nn.Linear, SGD): {t_dig:.1f} s; digital accuracy "
          f"{accuracy(digital, xte, yte) * 100:.2f}%, through the analog IO before programming "
          f"{accuracy(plain, xte, yte) * 100:.2f}%")
    print()

    t0 = time.perf_counter()
    table = evaluate_drift(models, (xte, yte), repeats=args.repeats, seed=args.seed, plot=args.out,
                           progress=not args.no_progress,
                           title=f"Digits MLP on a simulated PCM chip ({args.repeats} chips per point)")
    t_eval = time.perf_counter() - t0
    print(table)
    print()
    print(f"evaluation {t_eval:.1f} s, total {time.perf_counter() - t_start:.1f} s; figure: "
          f"{os.path.relpath(args.out, ROOT) if os.path.isabs(args.out) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
