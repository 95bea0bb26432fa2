"""Cost as the data grows: prepare, training-data loading, test and predict on synthetic sets of N volumes.

    python benchmarks/bench_scale.py --counts 10 100 1000 --size 512 --slices 100 300    # the full run
    python benchmarks/bench_scale.py --counts 10 100 1000 --size 128 --slices 24 40 --distinct 8
    python benchmarks/bench_scale.py --counts 10 100 --stages prepare load --json scale.json

For each N the script writes a raw BTCV folder of N SYNTHETIC phantom CT volumes (``organseg.data.phantom``,
``--size``² in-plane, slice counts drawn in ``--slices LO HI``), then runs, each as its own process so that
its peak resident memory is its own (``/usr/bin/time``'s maximum RSS, the largest process of the tree):

    prepare  ``organseg prepare synapse --workers W`` (the default split: 60 % training, 40 % test volumes)
    load     what ``train`` does before its first step (open the dataset, ``TrainBatches``: the slices held
             in memory or not, ``data.in_memory``) and then ``--batches`` batches of 24 slices at 224²
    test     ``organseg test`` of a tiny U-Net (width 0.125, one training step) on the test volumes, with
             its report and viewer pages
    predict  ``organseg predict`` of the same network on all N raw volumes

The network is tiny on purpose: the table measures what the pipeline costs per volume as N grows, not the
network's constant cost per voxel (that is bench_eval.py's). Generating a 512² phantom takes about a minute,
so the N volumes are hard links to ``--distinct`` generated ones (the files are read and converted N times;
the page cache may hold the raw files of a small set). Every file goes under ``--work`` (default
/work/scale_tmp/bench) and is deleted after each N unless ``--keep``. The table names the CPU, and the load
on the machine at the start: on a shared machine every number is slower.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import cpu_description

ORGANSEG = [sys.executable, "-m", "organseg"]
STAGES = ("prepare", "load", "test", "predict")


# ------------------------------------------------------------------------------------------------ the data
def _one_phantom(args: tuple[int, int, int, str]) -> tuple[int, list[int]]:
    from organseg.data.phantom import DESCRIP, make_phantom_case, phantom_geometry  # noqa: PLC0415 (worker)
    from organseg.imageio.volumes import write_image  # noqa: PLC0415 (worker)

    seed, size, slices, folder = args
    image, label, spacing = make_phantom_case(seed, size, slices)
    geom = phantom_geometry(image.shape, spacing)
    write_image(image, geom, Path(folder) / "img" / f"img{seed:04d}.nii.gz", description=DESCRIP)
    write_image(label, geom, Path(folder) / "label" / f"label{seed:04d}.nii.gz", description=DESCRIP)
    return seed, list(image.shape)


def distinct_phantoms(work: Path, k: int, size: int, lo: int, hi: int, jobs: int) -> tuple[Path, list]:
    """``k`` phantom volumes (made once, kept in ``work``), slice counts drawn evenly in [lo, hi]."""
    folder = work / f"phantoms_{size}_{lo}-{hi}_{k}"
    shapes_file = folder / "shapes.json"
    if shapes_file.is_file():
        return folder, json.loads(shapes_file.read_text())
    slices = np.linspace(lo, hi, k).round().astype(int).tolist() if k > 1 else [lo]
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "img").mkdir(parents=True)
    (tmp / "label").mkdir()
    items = [(i + 1, size, s, str(tmp)) for i, s in enumerate(slices)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(max(1, min(jobs, k))) as pool:
        shapes = [shape for _, shape in sorted(pool.imap_unordered(_one_phantom, items))]
    print(f"# {k} phantom volumes generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    shapes_file.with_name(shapes_file.name).parent.mkdir(exist_ok=True)
    (tmp / "shapes.json").write_text(json.dumps(shapes))
    tmp.rename(folder)
    return folder, shapes


def raw_set(distinct: Path, k: int, n: int, out: Path) -> Path:
    """A raw BTCV folder of ``n`` cases, case i a hard link to distinct volume (i - 1) % k."""
    for sub, prefix in (("img", "img"), ("label", "label")):
        (out / sub).mkdir(parents=True)
        for i in range(1, n + 1):
            src = distinct / sub / f"{prefix}{(i - 1) % k + 1:04d}.nii.gz"
            os.link(src, out / sub / f"{prefix}{i:04d}.nii.gz")
    (out / "SYNTHETIC.txt").write_text("SYNTHETIC DATA: organseg phantoms (benchmarks/bench_scale.py)\n")
    return out


# ------------------------------------------------------------------------------------------- measurements
def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; wall seconds and the peak RSS (MiB) of its process tree's largest process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf, log.open("a") as out:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", tf.name, *cmd], stdout=out, stderr=subprocess.STDOUT
        )
        seconds = time.perf_counter() - t0
        rss_kb = int(tf.read().strip().splitlines()[-1] or 0) if proc.returncode == 0 else 0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return {"seconds": seconds, "peak_rss_mib": rss_kb / 1024}


def child_load(spec: dict) -> None:
    """The ``load`` stage in this process: train's data setup, then ``batches`` batches."""
    import torch  # noqa: PLC0415 (the child alone needs it)

    from organseg.data.detect import resolve_dataset  # noqa: PLC0415
    from organseg.runtime import tune_malloc  # noqa: PLC0415
    from organseg.training.config import resolve_config  # noqa: PLC0415
    from organseg.training.data import TrainBatches  # noqa: PLC0415
    from organseg.training.distributed import DistEnv  # noqa: PLC0415

    tune_malloc()  # as the command line does
    torch.set_num_threads(spec["threads"])
    data = {"root": spec["data"]}
    if spec.get("in_memory") is not None:
        data["in_memory"] = spec["in_memory"]
    train = {"img_size": 224, "batch_size": 24, "progress": False, "device": "cpu"}
    cfg = resolve_config({"model": {"name": "unet"}, "data": data, "train": train})
    t0 = time.perf_counter()
    dataset = resolve_dataset(spec["data"], cfg, "no data")
    batches = TrainBatches(dataset, cfg, DistEnv())
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    seen = 0
    epoch = 0
    while seen < spec["batches"]:
        for _images, _labels in batches.epoch(epoch):
            seen += 1
            if seen == spec["batches"]:
                break
        epoch += 1
    per_batch = (time.perf_counter() - t1) / spec["batches"]
    result = {"setup_s": setup, "batch_s": per_batch, "slices": batches.num_slices}
    result["in_memory"] = getattr(batches, "in_memory", True)
    print(json.dumps(result))


def make_checkpoint(prep: Path, work: Path, log: Path, img_size: int) -> Path:
    """A tiny U-Net run (width 0.125, ``img_size``² input, one training step on 4 slices): its cost per slice
    is small."""
    run = work / f"tiny_unet_{img_size}_run"
    if (run / "checkpoints" / "last.pt").is_file() or any(run.glob("*.pt")):
        return run
    cfg = work / "tiny_unet.yaml"
    cfg.write_text(
        "model: {name: unet, args: {width: 0.125}}\n"
        f"data: {{root: {json.dumps(str(prep))}, max_train_slices: 4}}\n"
        f"train: {{img_size: {img_size}, batch_size: 2, max_iterations: 1, progress: false, threads: 1}}\n"
        "val: {every: 0}\n"
    )
    timed([*ORGANSEG, "train", str(cfg), "--out", str(run)], log)
    return run


def run_n(n: int, args: argparse.Namespace, distinct: Path, shapes: list, log: Path) -> list[dict]:
    root = args.work / f"n{n}"
    shutil.rmtree(root, ignore_errors=True)
    raw = raw_set(distinct, len(shapes), n, root / "raw")
    prep, rows = root / "prep", []
    voxels = sum(int(np.prod(shapes[i % len(shapes)])) for i in range(n))
    train_n = n - round(n * 0.4) if n > 1 else n

    def row(stage: str, volumes: int, m: dict, note: str = "") -> None:
        rows.append({"stage": stage, "n": n, "volumes": volumes, **m, "note": note})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    # prepare is always run: the other stages read its output
    workers = ["--workers", str(args.workers)] if args.workers else []
    # The last 40 % are test cases, named: with all 30 BTCV reference ids present (N >= 40) prepare would
    # otherwise use the reference 18/12 split and leave the other cases out.
    split = ["--test-cases", *(str(i) for i in range(train_n + 1, n + 1))] if n > train_n else []
    cmd = [
        *ORGANSEG,
        "prepare",
        "synapse",
        "--raw",
        str(raw),
        "--out",
        str(prep),
        "--quiet",
        *workers,
        *split,
    ]
    m = timed(cmd, log)
    row("prepare", n, m, f"{voxels / 1e6:.0f} M voxels, workers {args.workers or 'default'}")
    for setting in args.in_memory if "load" in args.stages else ():
        spec = {"data": str(prep), "batches": args.batches, "threads": args.threads, "in_memory": setting}
        m = timed([sys.executable, __file__, "--child-load", json.dumps(spec)], log)
        out = json.loads(log.read_text().strip().splitlines()[-1])
        where = "held in memory" if out["in_memory"] else "read per batch"
        note = f"in_memory {setting}: {out['slices']} slices {where}; setup {out['setup_s']:.1f} s, "
        note += f"{out['batch_s']:.2f} s/batch"
        row("load", train_n, {**m, **out}, note)
    if "test" in args.stages or "predict" in args.stages:
        run = make_checkpoint(prep, args.work, log, args.img_size)
    if "test" in args.stages:
        cmd = [*ORGANSEG, "test", str(run), "--data", str(prep), "--out", str(root / "results")]
        row("test", n - train_n, timed(cmd, log), "tiny U-Net; report and viewer pages")
    if "predict" in args.stages:
        cmd = [*ORGANSEG, "predict", str(run), str(raw / "img"), "--out", str(root / "pred")]
        row("predict", n, timed(cmd, log), "tiny U-Net")
    if not args.keep:
        shutil.rmtree(root)
    return rows


def table(rows: list[dict], header: str) -> str:
    """Per stage and N: total, per volume and, against the stage's previous N, the time each added volume
    cost (what stays flat when a stage scales; the total also holds the process's start, its imports)."""
    lines = [
        header,
        "",
        "| stage | N | volumes | total | per volume | per added volume | peak RSS | |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    previous: dict[str, dict] = {}
    for r in rows:
        per = r["seconds"] / max(1, r["volumes"])
        key = f"{r['stage']} {r['note'].split(':')[0] if r['stage'] == 'load' else ''}"
        before = previous.get(key)
        added = "–"
        if before is not None and r["volumes"] > before["volumes"]:
            added = f"{(r['seconds'] - before['seconds']) / (r['volumes'] - before['volumes']):.2f} s"
        previous[key] = r
        lines.append(
            f"| {r['stage']} | {r['n']} | {r['volumes']} | {r['seconds']:.1f} s | {per:.2f} s | {added} | "
            f"{r['peak_rss_mib']:.0f} MiB | {r['note']} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child-load":
        child_load(json.loads(sys.argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000], help="dataset sizes N")
    p.add_argument("--size", type=int, default=512, help="in-plane pixels (default 512, as CT)")
    p.add_argument("--slices", type=int, nargs=2, default=[100, 300], metavar=("LO", "HI"))
    p.add_argument("--distinct", type=int, default=4, help="phantom volumes generated; the rest are links")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--workers", type=int, default=None, help="prepare --workers (default: its own)")
    p.add_argument("--batches", type=int, default=20, help="batches fetched by the load stage")
    p.add_argument("--img-size", type=int, default=64, help="the tiny U-Net's input side (test, predict)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the load stage")
    p.add_argument(
        "--in-memory",
        nargs="+",
        default=["true", "false"],
        choices=("auto", "true", "false"),
        help="data.in_memory of the load stage, one run each (default: true and false)",
    )
    p.add_argument("--work", type=Path, default=Path("/work/scale_tmp/bench"))
    p.add_argument("--max-disk-gb", type=float, default=20.0, help="refuse a set whose files need more")
    p.add_argument("--keep", action="store_true", help="keep each N's files")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    args.in_memory = [{"true": True, "false": False}.get(v, v) for v in args.in_memory]
    args.work.mkdir(parents=True, exist_ok=True)
    mean = sum(args.slices) / 2
    biggest = (
        max(args.counts) * mean * args.size**2 * 5 * 1.1
    )  # prepared float32 + uint8, predictions, results
    if biggest > args.max_disk_gb * 1e9:
        raise SystemExit(
            f"N={max(args.counts)} at {args.size}² x ~{mean:.0f} slices needs about {biggest / 1e9:.0f} GB "
            f"on disk (> --max-disk-gb {args.max_disk_gb:g}); use fewer --slices, a smaller --size or N"
        )
    cpu = cpu_description()
    load = os.getloadavg()[0]
    distinct, shapes = distinct_phantoms(
        args.work, args.distinct, args.size, *args.slices, jobs=os.cpu_count()
    )
    log = args.work / "bench_scale.log"
    rows = []
    for n in args.counts:
        rows += run_n(n, args, distinct, shapes, log)
    header = (
        f"CPU: {cpu['model']}, {cpu['cores']} cores (load average {load:.1f} at the start); "
        f"SYNTHETIC phantoms {args.size}² x {args.slices[0]}-{args.slices[1]} slices "
        f"({args.distinct} distinct, linked); test/predict with a tiny U-Net (width 0.125, "
        f"{args.img_size}² input): the pipeline's cost, not the network's"
    )
    print(table(rows, header))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"cpu": cpu, "load": load, "args": vars(args) | {"work": str(args.work)}, "rows": rows},
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
