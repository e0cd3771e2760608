"""GPU benchmark (issue 6): AnalogLinear 4096x4096, batch 1024, on one GPU, beside torch.nn.Linear
on the same GPU in the same run.

  * training step (forward, MSE loss, backward, optimizer step) with SingleRPUConfig(ConstantStep)
    and AnalogSGD(lr=0.01), against nn.Linear with torch.optim.SGD(lr=0.01)  (target <= 3x);
  * eval-mode forward under torch.no_grad() with InferenceRPUConfig (programmed chip, global
    drift compensation, t = 1 h), against nn.Linear's forward                 (target <= 1.5x);
  * the same for FloatingPointRPUConfig as a reference point.

Times are medians of CUDA-event-timed repeats after warm-up (torch's current stream; the analog
kernels run on it too).  Writes a Markdown table to stdout and, with --json PATH, the figures.

    python tools/bench_gpu.py [--size 4096] [--batch 1024] [--repeats 20] [--json out.json]
"""

import argparse
import json
import statistics
import sys

import torch
from torch import nn
from torch.nn.functional import mse_loss


def cuda_median_ms(fn, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def step_fn(model, x, y, opt):
    def step():
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()
    return step


def fwd_fn(model, x):
    def fwd():
        with torch.no_grad():
            model(x)
    return fwd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    from aihw_deploy.nn import AnalogLinear
    from aihw_deploy.optim import AnalogSGD
    from aihw_deploy.simulator import cuda as rcuda
    from aihw_deploy.simulator import rpu_base
    from aihw_deploy.simulator.configs import ConstantStepDevice, FloatingPointRPUConfig, InferenceRPUConfig, SingleRPUConfig

    if not rcuda.available():
        print("bench_gpu: no CUDA build of rpucuda or no GPU here; nothing measured", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products on both sides
    n, b, reps = args.size, args.batch, args.repeats
    dev = torch.device("cuda")
    torch.manual_seed(0)
    x = torch.rand(b, n, device=dev)
    y = torch.rand(b, n, device=dev)
    print(f"GPU: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}; rpucuda dense products: "
          f"{rpu_base.cuda.blas_backend()}")
    print(f"AnalogLinear {n}x{n}, batch {b}; median of {reps} CUDA-event-timed runs; ratio = analog / torch\n")

    ref = nn.Linear(n, n).to(dev)
    t_ref_step = cuda_median_ms(step_fn(ref, x, y, torch.optim.SGD(ref.parameters(), lr=0.01)), reps)
    t_ref_fwd = cuda_median_ms(fwd_fn(ref, x), reps)

    rows = []

    def add(name, what, t, t_ref, target):
        rows.append({"config": name, "measure": what, "ms": t, "torch_ms": t_ref, "ratio": t / t_ref,
                     "target": target})

    fp = AnalogLinear(n, n, rpu_config=FloatingPointRPUConfig()).to(dev)
    add("FloatingPoint", "training step", cuda_median_ms(step_fn(fp, x, y, AnalogSGD(fp.parameters(), lr=0.01)), reps),
        t_ref_step, None)
    del fp

    cs = AnalogLinear(n, n, rpu_config=SingleRPUConfig(device=ConstantStepDevice())).to(dev)
    add("ConstantStep", "training step", cuda_median_ms(step_fn(cs, x, y, AnalogSGD(cs.parameters(), lr=0.01)), reps),
        t_ref_step, 3.0)
    del cs

    inf = AnalogLinear(n, n, rpu_config=InferenceRPUConfig()).to(dev)
    inf.eval()
    add("Inference (reference weights)", "eval forward", cuda_median_ms(fwd_fn(inf, x), reps), t_ref_fwd, 1.5)
    inf.program_analog_weights(seed=0)
    inf.drift_analog_weights(3600.0)
    add("Inference (programmed, t = 1 h)", "eval forward", cuda_median_ms(fwd_fn(inf, x), reps), t_ref_fwd, 1.5)
    inf.train()
    add("Inference", "training step", cuda_median_ms(step_fn(inf, x, y, AnalogSGD(inf.parameters(), lr=0.01)), reps),
        t_ref_step, None)

    print("| config | measure | analog ms | torch ms | ratio | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        target = f"<= {r['target']}x" if r["target"] else "-"
        print(f"| {r['config']} | {r['measure']} | {r['ms']:.3f} | {r['torch_ms']:.3f} | {r['ratio']:.2f}x | {target} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(dev), "size": n, "batch": b, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
