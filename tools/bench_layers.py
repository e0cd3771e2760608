"""Layer benchmark: analog layers vs torch.nn layers in the same run (2 threads by default).

For AnalogLinear 256x256/batch 32, 512x512/batch 128, 1024x1024/batch 256 and
AnalogConv2d(16, 32, 3, padding=1) on a 32x16x32x32 input: forward (no grad), forward+backward
and a training step (MSE, AnalogSGD lr 0.01) for FloatingPointRPUConfig,
SingleRPUConfig(ConstantStep), SingleRPUConfig(SoftBounds) and InferenceRPUConfig (eval-mode
forward), each beside torch.nn.Linear/Conv2d with torch.optim.SGD.  Median ms and ratio.

    python tools/bench_layers.py [--rounds 5] [--repeats 5] [--threads 2] [--quick] [--memory] [--case Conv2d]

"fwd" of InferenceRPUConfig is the eval-mode forward; the others are train-mode.  The models of a
case are timed in interleaved rounds (see measure_interleaved).  The Conv2d case adds "io_conv
alone": rpucuda's convolution through its binding, without the layer's Python (core_conv).  --memory adds the peak RSS growth
of three training steps, each configuration in fresh processes (median of 5).
"""

import argparse
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.nn.functional import mse_loss

from aihw_deploy.nn import AnalogConv2d, AnalogLinear
from aihw_deploy.optim import AnalogSGD
from aihw_deploy.simulator import set_num_threads
from aihw_deploy.simulator.configs import (ConstantStepDevice, FloatingPointRPUConfig, InferenceRPUConfig,
                                           SingleRPUConfig, SoftBoundsDevice)


WARMUP_S = 0.03  # at least 30 ms of warm-up calls (and at least 3)


def median_ms(fn, repeats):
    """Median of `repeats` calls after warm-up.  Warm-up lasts at least 3 calls and WARMUP_S:
    after its last parallel operator, torch's OpenMP (libgomp) threads spin for about 10 ms on the
    cores in the default environment (OMP_WAIT_POLICY unset), and a call timed inside that window
    shares its cores with them (a forward timed right after a training step ran 3.5 ms instead of
    1.8 ms for 4 calls).  Steady state is what a loop of the same operation sees."""
    t_end = time.perf_counter() + WARMUP_S
    n = 0
    while n < 3 or time.perf_counter() < t_end:
        fn()
        n += 1
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


def timing_functions(model, x, y, opt_cls, eval_forward):
    """The three timed operations of one model: forward (no grad; eval mode if eval_forward),
    forward + backward, and a training step."""
    opt = opt_cls(model.parameters(), lr=0.01)

    def fwd():
        model.train(not eval_forward)
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        model.train()
        model.zero_grad()
        mse_loss(model(x), y).backward()

    def step():
        model.train()
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()

    return {"fwd": fwd, "fb": fwd_bwd, "step": step}


def measure_interleaved(fns, repeats, rounds):
    """Median ms of every (model, operation): `rounds` rounds, in each every model and operation
    in turn (median of `repeats` calls), then the median over the rounds.  Interleaving gives
    every model the same conditions: torch's own convolution, for one, runs at 0.85 ms or at
    2-3.5 ms depending on whether glibc hands its buffers back fresh from the OS (thousands of page
    faults per call), which changes with the allocation history of the process."""
    per = {name: {k: [] for k in ops} for name, ops in fns.items()}
    for _ in range(rounds):
        for name, ops in fns.items():
            for k, fn in ops.items():
                per[name][k].append(median_ms(fn, repeats))
    return {name: {k: statistics.median(v) for k, v in ks.items()} for name, ks in per.items()}, per


def core_conv(model, x):
    """rpucuda's io_conv alone (the binding, output allocated once) with the eval-forward
    arguments of an InferenceRPUConfig AnalogConv2d: the layer's cost without Python around it."""
    from aihw_deploy.ops import encode_io, encode_mapping
    from aihw_deploy.ops._encoding import io_bindings, mapping_bindings
    from aihw_deploy.simulator import rpu_base

    cfg = model.rpu_config
    io, mp = io_bindings(tuple(encode_io(cfg.forward))), mapping_bindings(tuple(encode_mapping(cfg.mapping)))
    w = model.weight.detach().reshape(model.out_channels, -1).contiguous()
    bias = model.bias.detach().contiguous() if model.bias is not None else None
    k, st, p, d = (list(v) for v in (model.kernel_size, model.stride, model.padding, model.dilation))
    with torch.no_grad():
        y = torch.empty_like(model.eval()(x))
    calls = [0]

    def fwd():
        calls[0] += 1
        rpu_base.tiles.io_conv(w, x, y, io, mp, k, st, p, d, 1, False, None, [1], [calls[0]], bias=bias,
                               check_finite=True)

    return {"fwd": fwd}


def memory_child(case_index: int, config: str) -> None:
    """Peak RSS growth (MiB) of 3 training steps in a fresh process (printed)."""
    name, make_analog, make_torch, xshape = list(cases(False))[case_index]
    torch.manual_seed(0)
    x = torch.rand(*xshape)
    if config == "torch":
        model, opt_cls = make_torch(), torch.optim.SGD
    else:
        model, opt_cls = make_analog(cfg=dict(CONFIGS)[config]()), AnalogSGD
    with torch.no_grad():
        y = torch.rand_like(model(x))
    opt = opt_cls(model.parameters(), lr=0.01)

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])  # kB
        raise RuntimeError(key)

    with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS (VmHWM), Linux >= 4.0
        f.write("5")
    base = status("VmRSS:")
    for _ in range(3):
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()
    print((status("VmHWM:") - base) / 1024.0)


def memory_growth(case_index: int, config: str, runs: int = 5) -> float:
    """Median over `runs` fresh processes (the peak RSS growth of one process varies by several MiB
    with the state of glibc's heap)."""
    vals = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(case_index), config],
                             capture_output=True, text=True, check=True)
        vals.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(vals)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        memory_child(int(sys.argv[2]), sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="calls per round (median)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median of the round medians)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer sizes and rounds")
    ap.add_argument("--memory", action="store_true",
                    help="also report the peak RSS growth of 3 training steps (median of 5 fresh processes)")
    ap.add_argument("--case", default="", help="only the cases whose name contains this text (e.g. Conv2d)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    rounds = 3 if args.quick else args.rounds
    print(f"threads={args.threads}; {rounds} interleaved rounds of {args.repeats} calls, median; x ~ U(0,1), "
          "targets ~ U(0,1); ratio = analog / torch")
    print(f"{'case':32s} {'config':14s} {'fwd ms':>8s} {'ratio':>6s} {'f+b ms':>8s} {'ratio':>6s} {'step ms':>8s} {'ratio':>6s}"
          + ("   mem MiB  ratio" if args.memory else ""))
    all_names = [c[0] for c in cases(False)]
    for name, make_analog, make_torch, xshape in cases(args.quick):
        if args.case.lower() not in name.lower():
            continue
        ci = all_names.index(name)  # (memory_child looks the case up in the full list)
        torch.manual_seed(0)
        x = torch.rand(*xshape)
        ref = make_torch()
        with torch.no_grad():
            y = torch.rand_like(ref(x))
        fns = {"torch": timing_functions(ref, x, y, torch.optim.SGD, False)}
        for cname, cfg in CONFIGS:
            torch.manual_seed(0)
            fns[cname] = timing_functions(make_analog(cfg=cfg()), x, y, AnalogSGD, cname == "Inference")
        if "Conv2d" in name:  # (interleaved with the others: the same conditions)
            fns["io_conv alone"] = core_conv(make_analog(cfg=InferenceRPUConfig()), x)
        med, per = measure_interleaved(fns, args.repeats, rounds)
        t = med["torch"]
        t_mem = memory_growth(ci, "torch") if args.memory else 0.0
        for cname in fns:
            a = med[cname]
            if "fb" not in a:  # (forward only)
                print(f"{'':32s} {cname:14s} {a['fwd']:8.3f} {a['fwd'] / t['fwd']:6.2f}", flush=True)
                continue
            mem = ""
            if args.memory:
                a_mem = t_mem if cname == "torch" else memory_growth(ci, cname)
                mem = f"  {a_mem:8.1f} {a_mem / max(t_mem, 0.1):6.2f}"
            print(f"{name if cname == 'torch' else '':32s} {cname:14s} {a['fwd']:8.3f} {a['fwd'] / t['fwd']:6.2f} "
                  f"{a['fb']:8.3f} {a['fb'] / t['fb']:6.2f} {a['step']:8.3f} {a['step'] / t['step']:6.2f}{mem}",
                  flush=True)
        fr = per["torch"]["fwd"]
        print(f"{'':32s} (torch fwd by round: {min(fr):.3f} .. {max(fr):.3f} ms)", flush=True)


if __name__ == "__main__":
    main()
