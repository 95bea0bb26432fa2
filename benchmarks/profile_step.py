"""Where a training step's time goes: torch.profiler over whole organseg training steps (forward in the
configured precision, DiceCE loss, backward, optimizer), the top operators by self CPU time, as Markdown.

    python benchmarks/profile_step.py --network swin_unet --batch 4 --threads 2 [--precision bf16] [--top 15]

The networks are the full-size ones at 224² on random slices (the data pipeline is not in the step here;
benchmarks/bench_train.py times whole iterations with it). Warm-up steps run first and are not profiled.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import cpu_description
from organseg.losses import DiceCELoss
from organseg.models import create_model
from organseg.training.schedule import make_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default="swin_unet", choices=["swin_unet", "unet"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    extra = {"img_size": 224} if args.network == "swin_unet" else {}
    model = create_model(args.network, num_classes=4, **extra)
    channels_last = args.network == "unet"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    t = {"optimizer": args.optimizer, "momentum": 0.9, "weight_decay": 1e-4}
    opt = make_optimizer(model.parameters(), t, 1e-3)
    loss_fn = DiceCELoss(4, 0.4, 0.6)
    x = torch.rand(args.batch, 1, 224, 224)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (args.batch, 224, 224))
    amp = args.precision == "bf16"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss, _, _ = loss_fn.components(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    per_step = (time.perf_counter() - t0) / args.steps
    cpu = cpu_description()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    bf16 = ", ".join(cpu["flags"]) or "none"
    print(
        f"# {args.network}, batch {args.batch}, {args.precision}, {args.optimizer}, {args.threads} "
        f"threads, torch {torch.__version__}; {cpu['model']} (bf16: {bf16})"
    )
    print(
        f"# {per_step:.3f} s per step under the profiler ({args.steps} steps after {args.warmup} warm-up)\n"
    )
    print("| operator | self CPU per step (ms) | share | calls per step |\n|---|---|---|---|")
    for e in rows:
        ms = e.self_cpu_time_total / 1000 / args.steps
        share = 100 * e.self_cpu_time_total / total
        print(f"| `{e.key}` | {ms:.1f} | {share:.1f} % | {e.count // args.steps} |")


if __name__ == "__main__":
    main()
