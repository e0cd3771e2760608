"""Tile benchmark: rpu_base tiles vs the equivalent torch operation, measured in the same run.

For 256x256/batch 32, 512x512/batch 128 and 1024x1024/batch 256 it times

* forward   (x [N, K] -> y [N, M]),   beside torch  x @ W.T
* backward  (d [N, M] -> z [N, K]),   beside torch  d @ W
* update    (W -= lr d^T x),          beside torch  W.addmm_(d.T, x, alpha=-lr) (in place)

of ``rpu_base.tiles.FloatingPointTile`` and of ``rpu_base.tiles.AnalogTile`` with a
ConstantStepDevice and a SoftBoundsDevice (default IOParameters / UpdateParameters /
MappingParameter, learning rate 0.01), and the IO-managed forward alone
(``rpu_base.tiles.io_mvm`` with default IOParameters).  Each entry is the median of the
repeats (>= 7) after warm-up, in ms, and its ratio to the torch operation, timed right before
it (every entry has its own torch timing, so both see about the same background load).
Inputs are realistic: x ~ U(-1, 1), d ~ N(0, 0.01^2), W ~ N(0, 0.1^2).  Updates alternate
between d and -d (tiles and torch alike), so that the repeated calls let the weights random-walk
instead of drifting into the device bounds; one call costs the same either way.  Threads: 2 for
torch and for rpu_base (the environment is not touched: no OMP_* variables are set here).

    python tools/bench_tiles.py [--repeats 9] [--threads 2] [--quick] [--json PATH]
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.parameters import (ConstantStepDevice, IOParameters, MappingParameter,
                                              SoftBoundsDevice, UpdateParameters)

SIZES = [(256, 32), (512, 128), (1024, 256)]
LR = 0.01
X_RANGE, D_STD, W_STD = 1.0, 0.01, 0.1


def warm(fn, warmup, min_warm_s=0.05):
    # at least `warmup` calls and at least min_warm_s seconds (torch's first calls after start-up
    # are ~1000x slower for a while; a fixed small count is not enough)
    t0 = time.perf_counter()
    k = 0
    while k < warmup or (time.perf_counter() - t0 < min_warm_s and k < 1000):
        fn()
        k += 1


def median_ms(fn, repeats, warmup):
    warm(fn, warmup)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def paired_median_ms(fn, ref, repeats, warmup):
    """Median ms of the torch reference ref and then of fn, measured back to back.  (Not
    interleaved call by call: torch's OpenMP workers keep spinning for a while after each call
    and would take the cores from the next rpu_base call; the warm-up of fn absorbs that.)"""
    torch_ms = median_ms(ref, repeats, warmup)
    return median_ms(fn, repeats, warmup), torch_ms


def make_data(n, b, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, n, generator=g) * 2 - 1) * X_RANGE
    d = torch.randn(b, n, generator=g) * D_STD
    w = torch.randn(n, n, generator=g) * W_STD
    return x.contiguous(), d.contiguous(), w.contiguous()


def analog_tile(n, device, seed=1):
    return rpu_base.tiles.AnalogTile(n, n, device.as_bindings(), IOParameters().as_bindings(),
                                     IOParameters().as_bindings(), UpdateParameters().as_bindings(),
                                     MappingParameter().as_bindings(), seed)


def bench_size(n, b, repeats, warmup):
    x, d, w0 = make_data(n, b, seed=n)
    y = torch.empty(b, n)
    z = torch.empty(b, n)

    # torch references (same shapes, same buffers).
    W = w0.clone()
    d_pm = (d, (-d).contiguous())
    d_pm_T = (d.T, (-d).T)
    flip = [0]

    def torch_update():
        flip[0] ^= 1
        W.addmm_(d_pm_T[flip[0]], x, alpha=-LR)

    ref = {
        "forward": lambda: torch.matmul(x, W.T, out=y),
        "backward": lambda: torch.matmul(d, W, out=z),
        "update": torch_update,
    }

    rows = []

    def add(name, op, fn):
        ms, torch_ms = paired_median_ms(fn, ref[op], repeats, warmup)
        rows.append({"size": f"{n}x{n}", "batch": b, "tile": name, "op": op, "ms": ms,
                     "torch_ms": torch_ms, "ratio": ms / torch_ms})

    tiles = [("FloatingPoint", lambda: rpu_base.tiles.FloatingPointTile(n, n)),
             ("ConstantStep", lambda: analog_tile(n, ConstantStepDevice())),
             ("SoftBounds", lambda: analog_tile(n, SoftBoundsDevice()))]
    for name, make in tiles:
        t = make()
        t.set_weights(w0)
        t.learning_rate = LR
        add(name, "forward", lambda t=t: t.forward(x, out=y))
        add(name, "backward", lambda t=t: t.backward(d, out=z))

        # alternating +d / -d: the weights random-walk around w0 instead of drifting
        def tile_update(t=t):
            flip[0] ^= 1
            t.update(x, d_pm[flip[0]])

        add(name, "update", tile_update)

    io = IOParameters().as_bindings()
    mp = MappingParameter().as_bindings()
    add("io_mvm", "forward", lambda: rpu_base.tiles.io_mvm(w0, x, y, io, mp))
    return rows


def print_table(rows):
    hdr = f"{'size':>10} {'batch':>5}  {'tile':<14}{'op':<9}{'ms':>10}{'torch ms':>10}{'ratio':>9}"
    print(hdr)
    print("-" * len(hdr))
    last = None
    for r in rows:
        if last is not None and r["size"] != last:
            print()
        last = r["size"]
        print(f"{r['size']:>10} {r['batch']:>5}  {r['tile']:<14}{r['op']:<9}{r['ms']:>10.3f}"
              f"{r['torch_ms']:>10.3f}{r['ratio']:>8.1f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per entry (default 9, quick 7)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and warm-up runs")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (7 if args.quick else 9)
    if repeats < 7:
        ap.error("--repeats must be >= 7")
    warmup = 2 if args.quick else 3

    torch.set_num_threads(args.threads)
    rpu_base.set_num_threads(args.threads)
    print(f"bench_tiles: median of {repeats} runs after {warmup} warm-up, {args.threads} threads "
          f"(torch {torch.__version__}, {platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"rpu_base threads {rpu_base.get_num_threads()})")
    print(f"data: x ~ U(-{X_RANGE:g}, {X_RANGE:g}), d ~ N(0, {D_STD:g}^2), W ~ N(0, {W_STD:g}^2); "
          f"lr {LR:g}; default IOParameters/UpdateParameters/MappingParameter")
    print("torch refs (timed right before each entry): forward x@W.T, backward d@W, "
          "update W.addmm_(d.T, x, alpha=-lr); updates alternate d / -d\n")

    rows = []
    for n, b in SIZES:
        rows += bench_size(n, b, repeats, warmup)
        sys.stdout.flush()
    print_table(rows)
    if args.json:
        meta = {"repeats": repeats, "warmup": warmup, "threads": args.threads, "torch": torch.__version__,
                "lr": LR, "x": f"U(-{X_RANGE:g},{X_RANGE:g})", "d": f"N(0,{D_STD:g}^2)", "W": f"N(0,{W_STD:g}^2)"}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
