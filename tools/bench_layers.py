"""Layer benchmark: analog layers vs torch.nn layers in the same run (2 threads by default).

For AnalogLinear 256x256/batch 32, 512x512/batch 128, 1024x1024/batch 256 and
AnalogConv2d(16, 32, 3, padding=1) on a 32x16x32x32 input: forward (no grad), forward+backward
and a training step (MSE, AnalogSGD lr 0.01) for FloatingPointRPUConfig,
SingleRPUConfig(ConstantStep), SingleRPUConfig(SoftBounds) and InferenceRPUConfig (eval-mode
forward), each beside torch.nn.Linear/Conv2d with torch.optim.SGD.  Median ms and ratio.

    python tools/bench_layers.py [--repeats 9] [--threads 2] [--quick]
"""

import argparse
import statistics
import time
import tracemalloc

import torch
from torch import nn
from torch.nn.functional import mse_loss

from aihw_deploy.nn import AnalogConv2d, AnalogLinear
from aihw_deploy.optim import AnalogSGD
from aihw_deploy.simulator import set_num_threads
from aihw_deploy.simulator.configs import (ConstantStepDevice, FloatingPointRPUConfig, InferenceRPUConfig,
                                           SingleRPUConfig, SoftBoundsDevice)


def median_ms(fn, repeats):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def cases(quick):
    lin = [(256, 32), (512, 128), (1024, 256)]
    if quick:
        lin = lin[:2]
    for n, b in lin:
        yield f"Linear {n}x{n} b{b}", (lambda n=n, cfg=None: AnalogLinear(n, n, rpu_config=cfg)), \
            (lambda n=n: nn.Linear(n, n)), (b, n)
    yield "Conv2d 16->32 3x3 32x16x32x32", (lambda cfg=None: AnalogConv2d(16, 32, 3, padding=1, rpu_config=cfg)), \
        (lambda: nn.Conv2d(16, 32, 3, padding=1)), (32, 16, 32, 32)


CONFIGS = [("FloatingPoint", FloatingPointRPUConfig), ("ConstantStep", lambda: SingleRPUConfig(device=ConstantStepDevice())),
           ("SoftBounds", lambda: SingleRPUConfig(device=SoftBoundsDevice())), ("Inference", InferenceRPUConfig)]


def measure(model, x, y, repeats, opt_cls, eval_forward):
    opt = opt_cls(model.parameters(), lr=0.01)

    def fwd():
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        model.zero_grad()
        mse_loss(model(x), y).backward()

    def step():
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()

    model.train()
    r_step = median_ms(step, repeats)
    r_fb = median_ms(fwd_bwd, repeats)
    if eval_forward:
        model.eval()
    r_fwd = median_ms(fwd, repeats)
    tracemalloc.start()
    model.train()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return r_fwd, r_fb, r_step, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    reps = 5 if args.quick else args.repeats
    print(f"threads={args.threads}, median of {reps} runs; x ~ U(0,1), targets ~ U(0,1); ratio = analog / torch")
    print(f"{'case':32s} {'config':14s} {'fwd ms':>8s} {'ratio':>6s} {'f+b ms':>8s} {'ratio':>6s} {'step ms':>8s} {'ratio':>6s}")
    for name, make_analog, make_torch, xshape in cases(args.quick):
        torch.manual_seed(0)
        x = torch.rand(*xshape)
        ref = make_torch()
        with torch.no_grad():
            y = torch.rand_like(ref(x))
        t_fwd, t_fb, t_step, _ = measure(ref, x, y, reps, torch.optim.SGD, False)
        print(f"{name:32s} {'torch':14s} {t_fwd:8.3f} {'1.00':>6s} {t_fb:8.3f} {'1.00':>6s} {t_step:8.3f} {'1.00':>6s}", flush=True)
        for cname, cfg in CONFIGS:
            torch.manual_seed(0)
            model = make_analog(cfg=cfg())
            a_fwd, a_fb, a_step, _ = measure(model, x, y, reps, AnalogSGD, cname == "Inference")
            print(f"{'':32s} {cname:14s} {a_fwd:8.3f} {a_fwd / t_fwd:6.2f} {a_fb:8.3f} {a_fb / t_fb:6.2f} "
                  f"{a_step:8.3f} {a_step / t_step:6.2f}", flush=True)


if __name__ == "__main__":
    main()
