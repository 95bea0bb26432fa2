"""Speed and memory of U-Net and Swin-Unet: one training step and inference, plain vs fast paths.

    python benchmarks/bench_models.py                       # both networks, all modes and cases
    python benchmarks/bench_models.py --models unet --quick
    python benchmarks/bench_models.py --repeats 5 --json bench.json

Cases (224x224, 1 channel, 9 classes):
    train-b4   forward + DiceCELoss(9, 0.4, 0.6) + backward + SGD(momentum 0.9, wd 1e-4) step, batch 4
    infer-b1   forward under torch.inference_mode, batch 1
    infer-b16  the same, batch 16
Modes:
    plain-fp32  Swin-Unet attn_impl="reference" (the official arithmetic), U-Net contiguous NCHW
    fast-fp32   Swin-Unet attn_impl="sdpa", U-Net channels-last (organseg.models.unet.prepare_for_speed)
    fast-bf16   fast-fp32 inside torch.autocast(device, torch.bfloat16)
    (fast-* processes also start as the organseg command does: organseg.runtime.tune_malloc)
    plain-bf16  (only when asked for) plain-fp32 inside the same autocast, to separate layout from precision

``--profile MODEL MODE CASE`` instead prints a torch.profiler table of that case (top ops by self time).

Every (network, mode, case) runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is
clean and one case's allocator state cannot slow the next. Time is the median over ``--repeats`` steps after
``--warmup`` steps; CPU time (process time, all threads) is printed too because on a shared machine wall
time also measures the neighbours. Peak memory is the process peak RSS and its growth during the timed
loop (activations, gradients, optimiser state), or the CUDA allocator peak on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from _common import run_child
from _reference import official_loss, official_sgd
from organseg.fileio import atomic_write_text
from organseg.models import create_model
from organseg.models.unet import prepare_for_speed
from organseg.runtime import tune_malloc

# Official code, fp32, on the project's 2-core reference machine, and the targets for this project.
REFERENCE_TRAIN_S = {"swin_unet": 1.85, "unet": 7.94}
TARGET_TRAIN_S = {"swin_unet": 0.75, "unet": 4.0}

MODELS = ("unet", "swin_unet")
MODES = ("plain-fp32", "fast-fp32", "fast-bf16")
EXTRA_MODES = ("plain-bf16",)  # for investigation only: the plain layout/attention under bf16 autocast
CASES = {"train-b4": ("train", 4), "infer-b1": ("infer", 1), "infer-b16": ("infer", 16)}


def _build(name: str, mode: str, device: str):
    plain = mode.startswith("plain")
    if name == "swin_unet":
        return create_model("swin_unet", attn_impl="reference" if plain else "sdpa").to(device)
    model = create_model(name).to(device)
    if name == "unet" and not plain:
        prepare_for_speed(model)
    return model


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_step(name: str, mode: str, case: str, device: str):
    """Build the network and inputs of one case; returns a closure that runs one step."""
    torch.manual_seed(0)
    kind, batch = CASES[case]
    model = _build(name, mode, device)
    x = torch.rand(batch, 1, 224, 224, device=device)
    y = torch.randint(0, 9, (batch, 224, 224), device=device)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=mode.endswith("bf16"))

    if kind == "train":
        model.train()
        loss_fn = official_loss(9)
        opt = official_sgd(model, 0.01)

        def step() -> None:
            with autocast:
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast:
                model(x)

    return step


def run_case(name: str, mode: str, case: str, repeats: int, warmup: int, threads: int, device: str) -> dict:
    """Time one (network, mode, case) in this process; returns plain data."""
    if threads > 0:
        torch.set_num_threads(threads)
    if mode.startswith("fast"):
        tune_malloc()
    step = make_step(name, mode, case, device)
    batch = CASES[case][1]
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rss_before = _max_rss_mb()
    walls, cpus = [], []
    for i in range(warmup + repeats):
        if cuda and i == warmup:
            torch.cuda.reset_peak_memory_stats()
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        if i >= warmup:
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    peak = _max_rss_mb()
    return {
        "model": name,
        "mode": mode,
        "case": case,
        "batch": batch,
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "cpu_s": statistics.median(cpus),
        "times_s": walls,
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - rss_before,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "threads": torch.get_num_threads(),
        "device": device,
    }


def profile_case(
    name: str, mode: str, case: str, threads: int = 0, device: str = "cpu", steps: int = 2
) -> None:
    """Print the ops that dominate one case (after one warm-up step), by self time."""
    if threads > 0:
        torch.set_num_threads(threads)
    if mode.startswith("fast"):
        tune_malloc()
    step = make_step(name, mode, case, device)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(f"{name} {mode} {case}: {steps} steps")
    print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=48))


def _child(spec: dict) -> dict:
    """Run one case in a fresh interpreter (clean peak RSS, no allocator state from the previous case); a
    failed case comes back as the spec with an ``error`` line."""
    out = run_child(__file__, "--_child", spec)
    return {**spec, **out} if "error" in out else out


def format_table(results: list[dict]) -> str:
    cols = ["model", "mode", "case", "median s", "min s", "cpu s", "img/s", "peak MB", "+MB"]
    cols += ["ref s", "target s"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["model"], r["mode"], r["case"], "error: " + r["error"][:60]] + [""] * 7)
            continue
        train = r["case"].startswith("train")
        mem = r["cuda_peak_mb"] if r.get("cuda_peak_mb") is not None else r["peak_rss_mb"]
        rows.append(
            [
                r["model"],
                r["mode"],
                r["case"],
                f"{r['median_s']:.3f}",
                f"{r['min_s']:.3f}",
                f"{r['cpu_s']:.2f}",
                f"{r['batch'] / r['median_s']:.1f}",
                f"{mem:.0f}",
                f"{r['rss_growth_mb']:.0f}",
                f"{REFERENCE_TRAIN_S.get(r['model'], float('nan')):.2f}" if train else "",
                f"{TARGET_TRAIN_S.get(r['model'], float('nan')):.2f}" if train else "",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(str(c).rjust(w) if i >= 3 else str(c).ljust(w) for i, (c, w) in pairs).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out += [
        "",
        "median/min: wall seconds per step; cpu: process CPU seconds per step (all threads);",
        "peak MB: process peak RSS (CUDA: allocator peak); +MB: RSS growth during the timed steps;",
        "ref: official code, fp32, 2-core reference machine; target: this project's goal for a train step.",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES + EXTRA_MODES)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=5, help="timed steps per case (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, oneDNN kernels)")
    p.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps, no batch-16 inference")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--profile", nargs=3, metavar=("MODEL", "MODE", "CASE"), help="profile one case instead")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.profile:
        profile_case(*args.profile, threads=args.threads, device=args.device)
        return 0

    if args._child:
        spec = json.loads(args._child)
        print(json.dumps(run_case(**spec)))
        return 0

    if args.quick:
        args.repeats, args.warmup = 2, 1
        args.cases = [c for c in args.cases if c != "infer-b16"]
    specs = [
        {
            "name": m,
            "mode": mode,
            "case": c,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": args.threads,
            "device": args.device,
        }
        for m in args.models
        for c in args.cases
        for mode in args.modes
    ]
    results = []
    bar = tqdm(specs, desc="bench", unit="case")
    for spec in bar:
        r = _child(spec)
        r.setdefault("model", spec["name"])
        results.append(r)
        # One line per case as it finishes, so an interrupted run still reports what it measured.
        summary = r.get("error") or f"median {r['median_s']:.3f} s, peak {r['peak_rss_mb']:.0f} MB"
        bar.write(f"{spec['name']} {spec['mode']} {spec['case']}: {summary}")
    print(f"torch threads {args.threads or 'default'}, device {args.device}, cpu count {os.cpu_count()}")
    print(format_table(results))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
