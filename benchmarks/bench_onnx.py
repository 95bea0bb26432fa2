"""Volume inference time on the CPU: ONNX Runtime (fp32) vs PyTorch fp32 vs PyTorch bf16.

    python benchmarks/bench_onnx.py                        # both paper-size networks, 48-slice phantom
    python benchmarks/bench_onnx.py --slices 32 --repeat 1 --models swin_unet --json out.json

Each network at the paper configuration (seed-0 random weights, 9 classes, 224x224 input) is saved as an
organseg checkpoint and exported with ``organseg.inference.onnx.export_onnx`` (which checks the logits
against PyTorch). A synthetic abdominal CT phantom (``organseg.data.phantom``) of ``--slices`` slices at
224x224, CT-windowed, then goes through ``predict_volume`` (batched, ``--batch-size`` slices per pass, the
near-tie re-runs of fp32 on) once per backend, each in its own process started as the ``organseg`` command
starts (allocator tuning), after a warm-up batch. ``--repeat`` rounds run the backends in turn (side by side
in time, so a drifting load hits all of them); each backend's best run counts. PyTorch bf16 is
autocast (channels-last for the U-Net), the fastest CPU path organseg has. Label maps are compared with
PyTorch fp32's. The table names the CPU, its bf16 instructions (``/proc/cpuinfo`` flags) and the load
average, since a shared machine makes every number slower.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import cpu_description, phantom_ct, run_child
from organseg.checkpoint import atomic_torch_save, make_checkpoint, model_from_checkpoint
from organseg.data.classes import SYNAPSE_CLASSES
from organseg.data.preprocess import ct_window_spec
from organseg.inference.engine import predict_volume
from organseg.inference.onnx import export_onnx, load_onnx
from organseg.models import create_model
from organseg.runtime import tune_malloc

BACKENDS = (("torch", "fp32"), ("onnx", "fp32"), ("torch", "bf16"))


def make_onnx(name: str, folder: Path) -> tuple[Path, Path, dict, float]:
    """A seed-0 paper-size checkpoint of ``name`` and its ONNX export; returns (checkpoint, onnx, export
    metadata, export seconds)."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    ckpt = make_checkpoint(
        model,
        model_name=name,
        model_args={},
        class_names=list(SYNAPSE_CLASSES),
        preprocessing=ct_window_spec(),
        config={"train": {"img_size": 224}},
    )
    ckpt_path, onnx_path = folder / f"{name}.pt", folder / f"{name}.onnx"
    atomic_torch_save(ckpt, ckpt_path)
    t = time.perf_counter()
    info = export_onnx(ckpt_path, onnx_path)
    return ckpt_path, onnx_path, info, time.perf_counter() - t


def _child(spec: dict) -> None:
    """One backend, one network: warm-up batch, then the best of ``repeat`` volume predictions."""
    tune_malloc()
    torch.set_num_threads(spec["threads"])
    if spec["backend"] == "onnx":
        model, _ = load_onnx(spec["onnx"], threads=spec["threads"])
    else:
        model, _ = model_from_checkpoint(spec["checkpoint"])
    image = np.load(spec["image"])
    bs, precision = spec["batch_size"], spec["precision"]
    predict_volume(model, image[:bs], 224, bs, precision, "cpu")  # warm-up (oneDNN / ORT: per shape)
    best, stats = float("inf"), {}
    for _ in range(spec["repeat"]):
        t = time.perf_counter()
        pred = predict_volume(model, image, 224, bs, precision, "cpu", stats=stats)
        best = min(best, time.perf_counter() - t)
    np.save(spec["pred"], pred)
    print(json.dumps({"seconds": best, "rerun_slices": stats.get("rerun_slices", 0)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2, help="rounds over the backends; each one's best counts")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads of both")
    ap.add_argument("--models", default="unet,swin_unet")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return _child(json.loads(args._child))
    import onnxruntime  # noqa: PLC0415 (the onnx extra; --help and the children need not have it)

    cpu = cpu_description()
    results: dict = {
        "cpu": cpu,
        "threads": args.threads,
        "slices": args.slices,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "load_before": os.getloadavg(),
        "rows": [],
    }
    print(
        f"CPU: {cpu['model']}, {cpu['cores']} logical cores, flags: {' '.join(cpu['flags']) or 'none'}; "
        f"{args.threads} threads; load average {results['load_before'][0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "image.npy", phantom_ct(args.slices, 224)[0])
        for name in args.models.split(","):
            ckpt, onnx_path, info, export_s = make_onnx(name, folder)
            row = {
                "model": name,
                "export_s": export_s,
                "onnx_mb": info["bytes"] / 1e6,
                "export_max_abs_logit_diff": info["export_check"]["max_abs_logit_diff"],
            }
            preds = {}
            # Rounds of one run per backend, not all runs of one backend then the next: on a shared machine
            # the load drifts, and interleaving lets every backend meet the same drift; the best run counts.
            for _ in range(args.repeat):
                for backend, precision in BACKENDS:
                    key = f"{backend}_{precision}"
                    spec = {
                        "backend": backend,
                        "precision": precision,
                        "checkpoint": str(ckpt),
                        "onnx": str(onnx_path),
                        "image": str(folder / "image.npy"),
                        "repeat": 1,
                        "pred": str(folder / f"{key}.npy"),
                        "batch_size": args.batch_size,
                        "threads": args.threads,
                    }
                    out = run_child(
                        __file__, "--_child", spec, failed=f"bench_onnx: {backend} {precision} failed"
                    )
                    preds[key] = np.load(spec["pred"])
                    row[f"{key}_s"] = min(out["seconds"], row.get(f"{key}_s", float("inf")))
                    row[f"{key}_rerun_slices"] = out["rerun_slices"]
                    print(
                        json.dumps({"model": name, "backend": key, **out, "load": os.getloadavg()[0]}),
                        flush=True,
                    )
            for key in ("onnx_fp32", "torch_bf16"):
                row[f"{key}_agreement"] = float((preds[key] == preds["torch_fp32"]).mean())
            results["rows"].append(row)
    results["load_after"] = os.getloadavg()
    n = args.slices
    print(
        f"\n{n} slices of 224x224, batch {args.batch_size}, {args.threads} threads, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; CPU {cpu['model']} "
        f"({' '.join(cpu['flags']) or 'no bf16 flags'}); load average {results['load_before'][0]:.1f} -> "
        f"{results['load_after'][0]:.1f}\n"
    )
    print(
        "| network | PyTorch fp32 (s) | ONNX Runtime fp32 (s) | PyTorch bf16 (s) | ORT vs PyTorch fp32 "
        "| voxels equal to PyTorch fp32: ORT / bf16 | export check max abs logit diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(
            f"| {r['model']} | {r['torch_fp32_s']:.2f} | {r['onnx_fp32_s']:.2f} | "
            f"{r['torch_bf16_s']:.2f} | "
            f"{r['torch_fp32_s'] / r['onnx_fp32_s']:.2f}x | {100 * r['onnx_fp32_agreement']:.4f} % / "
            f"{100 * r['torch_bf16_agreement']:.3f} % | {r['export_max_abs_logit_diff']:.2g} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
