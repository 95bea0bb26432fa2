"""Training throughput (images/s of whole iterations, data included): reference-style loop vs organseg.

reference  the official loop, written out here: a DataLoader over the slices with the per-sample SciPy
           ``RandomGenerator`` (zoom order 3), fp32, contiguous tensors, SGD, 0.4·CE + 0.6·Dice, poly LR;
           Swin-Unet with the official attention arithmetic (``--ref-attn sdpa``: with organseg's instead).
organseg   ``organseg.training.train`` itself (``max_iterations`` = warm-up + timed iterations): slices in
           memory, ``BatchAugment`` on the whole batch, bf16 autocast, channels-last for the U-Net, and
           ``torch.compile`` with ``--compile``. Its rate comes from the run's own ``metrics.jsonl`` clock.

Each measurement runs in its own process; organseg's start as ``organseg train`` does (allocator tuning,
``organseg.runtime``), the reference loop's as a plain Python process.

Data: ACDC slices from ../shared/data/acdc when present (``--data DIR`` for another ACDC-layout folder), else
synthetic 512² slices (Synapse-sized). Variants are interleaved and repeated; the table reports the best
repeat of each (the least disturbed by other processes on a shared machine) and the median.

    python benchmarks/bench_train.py                       # both networks, batch 4
    python benchmarks/bench_train.py --networks unet --batch 8 --iters 4 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import run_child
from _reference import official_seed, official_train_rate
from organseg.data.acdc import ACDCDataset
from organseg.data.base import ArrayDataset
from organseg.models import create_model
from organseg.runtime import tune_malloc
from organseg.training import read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
ACDC = ROOT.parent / "shared" / "data" / "acdc"


def load_dataset(data: str | None, n: int):
    """(dataset, description): ACDC-layout folder when available, else synthetic 512² slices."""
    root = Path(data) if data else ACDC
    if root.is_dir():
        ds = ACDCDataset(root)
        slices = ds.train_slices()
        picked = [slices[i] for i in range(min(n, len(slices)))]
        return ArrayDataset(picked, class_names=ds.class_names, name="acdc"), f"ACDC slices ({root})"
    rng = np.random.default_rng(0)
    slices = []
    for _ in range(n):
        label = np.zeros((512, 512), np.int64)
        label[150:300, 200:330] = 1 + rng.integers(0, 8)
        slices.append(((rng.random((512, 512)) * 0.3 + 0.1 * label).astype(np.float32), label))
    return ArrayDataset(
        slices, class_names=[f"c{i}" for i in range(9)], name="synthetic"
    ), "synthetic 512² slices"


def reference_rate(
    name: str,
    ds,
    batch: int,
    warmup: int,
    iters: int,
    img: int,
    workers: int,
    device: str,
    args: dict,
    ref_attn: str = "reference",
) -> float:
    """The official trainer's loop (benchmarks/_reference.py), fp32, per-sample SciPy augmentation in a
    DataLoader."""
    official_seed()
    # Swin-Unet: the official attention arithmetic (explicit softmax, mask added through a 5-D view), as the
    # official trainer runs it; --ref-attn sdpa gives the reference loop organseg's attention instead.
    size = {"img_size": img, "attn_impl": ref_attn} if name == "swin_unet" else {}
    model = create_model(name, num_classes=ds.num_classes, **{**size, **args}).to(device).train()
    return official_train_rate(
        model,
        ds.train_slices(),
        ds.num_classes,
        batch=batch,
        warmup=warmup,
        iters=iters,
        img=img,
        workers=workers,
        device=device,
    )


def organseg_rate(
    name: str,
    ds,
    batch: int,
    warmup: int,
    iters: int,
    img: int,
    precision: str,
    compile_: bool,
    device: str,
    args: dict,
) -> float:
    """organseg.training.train for warmup + iters iterations; rate from its own per-iteration clock."""
    cfg = {
        "model": {"name": name, "args": args},
        "train": {
            "img_size": img,
            "batch_size": batch,
            "max_iterations": warmup + iters,
            "precision": precision,
            "compile": compile_,
            "augment": "batched",
            "device": device,
            "progress": False,
        },
        "val": {"every": 0},
    }
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        train(cfg, ds, Path(tmp) / "run")
        times = [r["time"] for r in read_metrics(Path(tmp) / "run", "train")]
    return batch * iters / (times[-1] - times[warmup - 1])


def describe_data(data: str | None) -> tuple[Path | None, str]:
    root = Path(data) if data else ACDC
    return (root, f"ACDC slices ({root})") if root.is_dir() else (None, "synthetic 512² slices")


def _measure_one(args: argparse.Namespace, spec: dict, n_slices: int) -> int:
    """Child process: one (network, variant) measurement. organseg variants start as ``organseg train``
    does (organseg.runtime.tune_malloc); the reference loop runs in a plain process, as the official code."""
    name, kind = spec["network"], spec["kind"]
    if kind == "organseg":
        tune_malloc()
    ds, _ = load_dataset(args.data, n_slices)
    margs = json.loads(args.swin_args) if name == "swin_unet" else {}
    common = (name, ds, args.batch, args.warmup, args.iters, args.img)
    if kind == "reference":
        rate = reference_rate(*common, args.ref_workers, args.device, margs, args.ref_attn)
    else:
        rate = organseg_rate(*common, spec["precision"], spec["compile"], args.device, margs)
    print(json.dumps({"rate": rate}))
    return 0


def _in_child(argv: list[str] | None, spec: dict) -> float:
    """Run one measurement in a fresh interpreter (benchmarks/_common.run_child): no allocator or kernel-cache
    state carries over from one variant to the next."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = run_child(__file__, "--_one", spec, argv=args, failed=f"bench_train: the {spec} measurement failed")
    return float(out["rate"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--networks", nargs="+", default=["swin_unet", "unet"], choices=["swin_unet", "unet"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--data", help="ACDC-layout folder (default ../shared/data/acdc, else synthetic 512²)")
    p.add_argument("--ref-workers", type=int, default=0, help="DataLoader workers of the reference loop")
    p.add_argument(
        "--ref-attn",
        default="reference",
        choices=["reference", "sdpa"],
        help="Swin-Unet attention of the reference loop: the official arithmetic (default) or organseg's",
    )
    p.add_argument(
        "--precisions",
        nargs="+",
        default=["bf16"],
        choices=["fp32", "bf16", "fp16"],
        help="organseg precisions to time",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--swin-args", default="{}", help="Swin-Unet overrides as JSON, e.g. '{\"embed_dim\": 12}'"
    )
    p.add_argument("--compile", action="store_true", help="also time torch.compile (last precision)")
    p.add_argument("--threads", type=int, help="torch threads for every variant (default: torch's choice)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--_one", help=argparse.SUPPRESS)  # a child process: one measurement, JSON on stdout
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)  # train() keeps the caller's thread count (train.threads unset)
    n_slices = args.batch * (args.warmup + args.iters) * 2
    if args._one:
        return _measure_one(args, json.loads(args._one), n_slices)
    _, what = describe_data(args.data)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"# {where}; {what}, batch {args.batch}, {args.iters} timed iterations after {args.warmup} warm-up, "
        f"best of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    variants = [("reference", "fp32", False)] + [("organseg", p, False) for p in args.precisions]
    if args.compile:  # compiling takes a while: only the last (fastest) precision
        variants.append(("organseg", args.precisions[-1], True))
    results = []
    for name in args.networks:
        rates: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved, so that background load hits every variant alike
            for kind, precision, comp in variants:
                label = f"{kind} {precision}" + (" compile" if comp else "")
                r = _in_child(argv, {"network": name, "kind": kind, "precision": precision, "compile": comp})
                rates.setdefault(label, []).append(r)
                print(f"  {name:9s} {label:22s} {r:7.2f} img/s", flush=True)
        base = max(rates["reference fp32"])
        for label, rs in rates.items():
            results.append(
                {
                    "network": name,
                    "variant": label,
                    "best": max(rs),
                    "median": statistics.median(rs),
                    "speedup": max(rs) / base,
                    "runs": rs,
                }
            )
    print("\n| network | variant | img/s (best) | img/s (median) | speed-up vs reference |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['network']} | {r['variant']} | {r['best']:.2f} | {r['median']:.2f} | {r['speedup']:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"data": what, "args": vars(args), "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
