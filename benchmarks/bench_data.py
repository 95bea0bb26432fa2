"""Data-path throughput: the reference per-sample SciPy augmentation vs the batched torch path, next to how
fast the networks consume samples in a training step.

    python benchmarks/bench_data.py                    # 512² slices, batch 24, 1 and 2 workers, both models
    python benchmarks/bench_data.py --batches 4 --no-models --json bench_data.json
    python benchmarks/bench_data.py --threads 1        # main-process torch threads (matters on busy CPUs)

Rows (samples/s, higher is better; augmentation output 224², the reference's 512² Synapse input):

    reference  DataLoader(SliceDataset(slices, RandomGenerator)), per-sample SciPy rot/flip/rotate + zoom
    batched    DataLoader(SliceDataset(slices), collate_fn=AugmentCollate): BatchAugment on the whole batch,
               in the workers (CPU)
    batched-main  BatchAugment in the main process on the training device (slices already on it), the path
               ``train --augment batched`` uses; on a GPU this is the number that matters
    model      one SGD training step (forward, DiceCE loss, backward, step) of create_model(name) at the
               paper batch (Swin-Unet 24, U-Net 16), fp32, as samples/s

The input slices are SYNTHETIC (phantom CT, windowed to [0, 1]) held in memory, so the numbers measure the
augmentation, not the disk. Each measurement runs whole batches after one warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from _common import phantom_ct
from _reference import official_dataset, official_loss, official_sgd
from organseg.data.augment import AugmentCollate, BatchAugment, SliceDataset
from organseg.device import resolve_device
from organseg.models import create_model


def _slices(n: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    image, label, _ = phantom_ct(max(n, 4), size)
    label = label.astype(np.int64)
    return [(image[k], label[k]) for k in range(n)]


def _loader_rate(dataset, batch: int, workers: int, batches: int, collate=None) -> float:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        drop_last=True,
    )
    it = iter(loader)
    next(it)  # warm-up: worker start, SciPy/zoom-matrix caches
    t0 = time.perf_counter()
    seen = 0
    for _ in range(batches):
        try:
            images, _ = next(it)
        except StopIteration:
            it = iter(loader)
            images, _ = next(it)
        seen += len(images)
    return seen / (time.perf_counter() - t0)


def _main_process_rate(slices, batch: int, batches: int, device: torch.device, out: int) -> float:
    images = torch.stack([torch.from_numpy(s[0]) for s in slices]).to(device)
    labels = torch.stack([torch.from_numpy(s[1]) for s in slices]).to(device=device, dtype=torch.uint8)
    aug = BatchAugment((out, out))
    gen = torch.Generator(device).manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, len(slices), (batch,), device=device)
        aug(images[idx], labels[idx], gen)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * batches / (time.perf_counter() - t0)


def _model_rate(name: str, batch: int, steps: int, device: torch.device, size: int) -> float | str:
    try:
        model = create_model(name).to(device).train()
    except Exception as exc:  # a network this device cannot hold: the row says why, the rest is measured
        return f"n/a ({type(exc).__name__}: {exc})"[:80]
    loss_fn = official_loss(9)
    opt = official_sgd(model, 0.01)
    x = torch.rand(batch, 1, size, size, device=device)
    y = torch.randint(0, 9, (batch, size, size), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=24, help="augmentation batch size (default %(default)s)")
    p.add_argument(
        "--batches", type=int, default=6, help="timed batches per loader row (default %(default)s)"
    )
    p.add_argument("--slices", type=int, default=48, help="distinct slices in memory (default %(default)s)")
    p.add_argument("--input", type=int, default=512, help="input slice size (default %(default)s)")
    p.add_argument("--output", type=int, default=224, help="augmentation output size (default %(default)s)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers (default 1 2)")
    p.add_argument("--model-steps", type=int, default=2, help="timed training steps per model")
    p.add_argument("--no-models", action="store_true", help="skip the model consumption rows")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--threads", type=int, help="torch intra-op threads in the main process (default: torch's)"
    )
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    if args.threads:
        # On an oversubscribed machine a second OpenMP thread can cost far more than it gives (spin waits).
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)  # organseg's one rule
    slices = _slices(args.slices, args.input)
    out = args.output
    rows: list[dict] = []

    def add(path: str, where: str, rate: float | str) -> None:
        rows.append({"path": path, "where": where, "samples_per_s": rate})
        shown = f"{rate:10.1f}" if isinstance(rate, float) else f"{rate:>10}"
        print(f"{path:<14} {where:<34} {shown}", flush=True)

    # A shared machine's neighbours show up in every row: print the load so readers can judge the numbers.
    load, cpus, threads = os.getloadavg()[0], os.cpu_count(), torch.get_num_threads()
    print(f"load average {load:.1f} on {cpus} CPUs, torch threads {threads}")
    print(f"{'path':<14} {'where':<34} {'samples/s':>10}")
    for w in args.workers:
        ds = official_dataset(slices, out)
        add("reference", f"{w} worker(s), SciPy per sample", _loader_rate(ds, args.batch, w, args.batches))
    for w in args.workers:
        ds = SliceDataset(slices)
        rate = _loader_rate(ds, args.batch, w, args.batches, collate=AugmentCollate((out, out)))
        add("batched", f"{w} worker(s), torch CPU in workers", rate)
    add(
        "batched-main",
        f"main process, {device.type}",
        _main_process_rate(slices, args.batch, args.batches * 2, device, out),
    )
    if not args.no_models:
        for name, batch in (("swin_unet", 24), ("unet", 16)):
            add(
                f"model:{name}",
                f"train step, batch {batch}, {device.type}",
                _model_rate(name, batch, args.model_steps, device, out),
            )
    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_end": os.getloadavg()[0],
        "batch": args.batch,
        "input": args.input,
        "output": out,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
