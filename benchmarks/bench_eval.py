"""Evaluation speed: metrics (MedPy vs organseg) and volume inference (reference slice loop vs batched).

    python benchmarks/bench_eval.py                         # 512x512x100 phantom case, both parts
    python benchmarks/bench_eval.py --infer-slices 16       # fewer slices for inference (slow on a CPU)
    python benchmarks/bench_eval.py --skip-inference --json out.json

Metrics: a synthetic abdominal CT phantom (``organseg.data.phantom``) of 512x512x100 voxels with the 8 Synapse
organs; the "prediction" is the truth with every organ shifted by a few voxels and its surface roughened
(``clean``), plus scattered false-positive voxels all over the volume (``stray``: they stretch bounding boxes,
the worst case for box-restricted distance transforms). MedPy runs TransUNet's ``calculate_metric_percase``;
every number must be equal. Beside it, the surface row: the corrected protocol's HD95 in mm alone
(``case_metrics``) against the one call that adds NSD and ASSD from the same distances (``case_metrics_all``,
both protocols), and the references for those: MedPy's ``assd`` and MONAI's ``compute_surface_dice`` (when
installed), which must agree to 1e-6.

organseg's parts run as the ``organseg`` command does (allocator tuning, ``organseg.runtime``); MedPy in the
same process, the reference inference loop in a plain child process (as the official test script runs).

Inference: both networks at the paper configuration (random weights unless ``--checkpoint``), the phantom's
CT window as input, reference loop (one slice per forward pass) vs batched (``--batch-size`` slices, fp32,
and bf16: channels-last for the U-Net). Predictions must be equal in fp32; bf16 reports the share of voxels
equal to the fp32 loop's (use ``--checkpoint`` with a trained network: random ones are full of near-ties).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from _common import phantom_ct, run_child
from _reference import medpy_case, medpy_monai_surface
from organseg.checkpoint import model_from_checkpoint
from organseg.data.detect import resolve_dataset
from organseg.device import resolve_device
from organseg.inference.engine import predict_volume
from organseg.inference.onnx import export_onnx, load_onnx
from organseg.inference.targets import checkpoint_patch_size
from organseg.metrics import DEFAULT_NSD_TOLERANCE_MM, case_metrics, case_metrics_all, dice, hd95
from organseg.models import create_model
from organseg.runtime import tune_malloc


def perturbed(gt: np.ndarray, stray: float, seed: int = 0) -> np.ndarray:
    """Each organ shifted by up to (1, 4, 4) voxels with a roughened surface; optional stray voxels."""
    rng = np.random.default_rng(seed)
    pred = np.zeros_like(gt)
    for c in range(1, int(gt.max()) + 1):
        m = gt == c
        if not m.any():
            continue
        shift = (int(rng.integers(-1, 2)), int(rng.integers(-4, 5)), int(rng.integers(-4, 5)))
        m = np.roll(m, shift, (0, 1, 2))
        edge = m ^ ndimage.binary_erosion(m)
        m &= ~(edge & (rng.random(m.shape) < 0.3))
        pred[m] = c
    if stray:
        idx = rng.random(gt.shape) < stray
        pred[idx] = rng.integers(1, 9, int(idx.sum()))
    return pred


def plain_case(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    out = []
    for i in range(1, num_classes):
        p, g = pred == i, gt == i
        if p.any() and g.any():
            out.append((dice(p, g), hd95(p, g)))
        else:
            out.append((1.0, 0.0) if p.any() else (0.0, 0.0))
    return np.array(out)


def bench_surface(gt: np.ndarray, spacing, skip_medpy: bool) -> list[dict]:
    rows = []
    for name, stray in (("clean", 0.0), ("stray", 1e-5)):
        pred = perturbed(gt, stray)
        t_hd, _ = timed(case_metrics, pred, gt, 9, "corrected", spacing, repeat=3)
        t_all, both = timed(case_metrics_all, pred, gt, 9, spacing, repeat=3)
        row = {
            "case": name,
            "spacing": list(spacing),
            "nsd_tolerance_mm": DEFAULT_NSD_TOLERANCE_MM,
            "corrected_hd95_only_s": t_hd,
            "both_protocols_plus_nsd_assd_s": t_all,
        }
        if not skip_medpy:
            t_ref, ref = timed(medpy_monai_surface, pred, gt, 9, spacing, DEFAULT_NSD_TOLERANCE_MM)
            ours = both["surface"]
            ok = ~np.isnan(ref)
            diff = float(np.abs(ours[ok] - ref[ok]).max())
            row.update(medpy_assd_plus_monai_nsd_s=t_ref, max_abs_diff=diff, monai=bool(ok[:, 0].any()))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def timed(fn, *args, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_metrics(gt: np.ndarray, skip_medpy: bool) -> list[dict]:
    rows = []
    for name, stray in (("clean", 0.0), ("stray", 1e-5)):
        pred = perturbed(gt, stray)
        t_fast, fast = timed(case_metrics, pred, gt, 9, repeat=3)
        t_plain, plain = timed(plain_case, pred, gt, 9)
        row = {
            "case": name,
            "shape": list(gt.shape),
            "ours_s": t_fast,
            "plain_box_edt_s": t_plain,
            "plain_equal": bool(np.array_equal(fast, plain)),
        }
        if not skip_medpy:
            t_medpy, ref = timed(medpy_case, pred, gt, 9)
            row.update(
                medpy_s=t_medpy,
                speedup=t_medpy / t_fast,
                equal=bool(np.array_equal(fast, ref)),
                max_abs_diff=float(np.abs(fast - ref).max()),
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _timed_predict(model, image: np.ndarray, batch_size: int, device: torch.device, **kw):
    size = getattr(model, "img_size", 224)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = predict_volume(model, image, size, batch_size, device=device, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def _network(name: str, checkpoint: str | None) -> tuple[torch.nn.Module, str]:
    """The benchmarked network and its label: the checkpoint's, or ``name`` with seed-0 random weights (the
    same weights in the parent and in the reference-loop child)."""
    torch.manual_seed(0)
    if checkpoint:
        model, ckpt = model_from_checkpoint(checkpoint)
        return model, f"{ckpt['model_name']} ({Path(checkpoint).name})"
    return create_model(name), name


def _loop_in_child(
    name: str, image: np.ndarray, batch_size: int, device: torch.device, checkpoint: str | None
) -> tuple[float, np.ndarray]:
    """The reference loop in a plain Python process (no allocator tuning), as the official test script runs;
    the same weights (seed 0, or the checkpoint). Returns its time and its prediction."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "image.npy", image)
        spec = {
            "name": name,
            "dir": tmp,
            "batch_size": batch_size,
            "device": str(device),
            "checkpoint": checkpoint,
        }
        out = run_child(__file__, "--_loop", spec, failed=f"bench_eval: the reference loop of {name} failed")
        return out["seconds"], np.load(Path(tmp) / "pred.npy")


def _run_loop(spec: dict) -> None:
    model, _ = _network(spec["name"], spec["checkpoint"])
    device = torch.device(spec["device"])
    model = model.to(device).eval()
    image = np.load(Path(spec["dir"]) / "image.npy")
    _timed_predict(model, image[:1], spec["batch_size"], device, reference_loop=True)  # warm-up
    seconds, pred = _timed_predict(model, image, spec["batch_size"], device, reference_loop=True)
    np.save(Path(spec["dir"]) / "pred.npy", pred)
    print(json.dumps({"seconds": seconds}))


def bench_inference(
    image: np.ndarray, models: list[str], batch_size: int, device: torch.device, checkpoint: str | None
) -> list[dict]:
    rows = []
    for name in models:
        model, label = _network(name, checkpoint)
        model = model.to(device).eval()
        t_loop, ref = _loop_in_child(name, image, batch_size, device, checkpoint)
        name = label
        _timed_predict(model, image[:batch_size], batch_size, device)  # warm-up (oneDNN: per shape)
        stats: dict = {}
        t_batch, fast = _timed_predict(model, image, batch_size, device, stats=stats)
        t_raw, raw = _timed_predict(model, image, batch_size, device, tie_check=False)
        row = {
            "model": name,
            "slices": image.shape[0],
            "device": str(device),
            "loop_s": t_loop,
            "batched_fp32_s": t_batch,
            "speedup": t_loop / t_batch,
            "equal": bool(np.array_equal(ref, fast)),
            "rerun_slices": stats["rerun_slices"],
            "batched_no_tie_check_s": t_raw,
            "speedup_no_tie_check": t_loop / t_raw,
            "no_tie_check_differing_voxels": int((raw != ref).sum()),
        }
        if device.type == "cuda" or torch.backends.mkldnn.is_available():  # CPU bf16: oneDNN (AMX/AVX-512)
            _timed_predict(model, image[:batch_size], batch_size, device, precision="bf16")  # warm-up
            t_bf16, bf = _timed_predict(model, image, batch_size, device, precision="bf16")
            row.update(
                batched_bf16_s=t_bf16,
                speedup_bf16=t_loop / t_bf16,
                bf16_voxel_agreement=float((bf == ref).mean()),
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


ENGINES = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"))


def bench_engines(
    checkpoints: list[str], data: str | None, volumes: int, batch_size: int, repeat: int
) -> list[dict]:
    """Torch fp32, torch bf16 and ONNX Runtime fp32 (the checkpoint exported with ``export_onnx``) on the same
    volumes, interleaved in one process: round r runs every engine once, in turn, so a shared machine's
    drifting load hits all of them alike. Per engine: every round's seconds and their median; ratios are of
    medians against torch fp32; label maps are compared voxel by voxel with torch fp32's (whose predictions
    equal the reference loop's). Volumes: the first ``volumes`` of the dataset's val (else test) split with
    ``data``, else a 32-slice phantom."""
    if data:
        ds = resolve_dataset(data, None, "--data")
        split = "val" if ds.case_ids("val") else "test"
        images = [ds.volume(c).image for c in ds.case_ids(split)[:volumes]]
    else:
        images = [phantom_ct(32, 224)[0]]
    rows = []
    for ckpt in checkpoints:
        model, saved = model_from_checkpoint(ckpt)
        model, label, size = (
            model.eval(),
            f"{saved['model_name']} ({Path(ckpt).name})",
            checkpoint_patch_size(saved),
        )
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            export_onnx(ckpt, Path(tmp) / "m.onnx")
            export_s = time.perf_counter() - t
            ort_model, _ = load_onnx(Path(tmp) / "m.onnx", threads=torch.get_num_threads())
        nets = {"torch": model, "onnxruntime": ort_model}
        for e in ENGINES:  # warm-up: oneDNN and ONNX Runtime pick kernels per shape on first use
            predict_volume(nets[e[0]], images[0][:batch_size], size, batch_size, precision=e[1])
        seconds: dict[str, list[float]] = {f"{n} {p}": [] for n, p in ENGINES}
        preds: dict[str, list[np.ndarray]] = {}
        for _ in range(repeat):
            for e in ENGINES:
                t = time.perf_counter()
                preds[f"{e[0]} {e[1]}"] = [
                    predict_volume(nets[e[0]], im, size, batch_size, precision=e[1]) for im in images
                ]
                s = time.perf_counter() - t
                seconds[f"{e[0]} {e[1]}"].append(s)
        ref = preds["torch fp32"]
        med = {k: float(np.median(v)) for k, v in seconds.items()}
        row = {
            "model": label,
            "slices": int(sum(im.shape[0] for im in images)),
            "batch_size": batch_size,
            "export_s": export_s,
            "seconds": seconds,
            "median_s": med,
            "speedup_vs_torch_fp32": {k: med["torch fp32"] / v for k, v in med.items()},
            "voxel_agreement_vs_torch_fp32": {
                k: float(
                    sum(int((a == b).sum()) for a, b in zip(v, ref, strict=True)) / sum(a.size for a in ref)
                )
                for k, v in preds.items()
            },
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=100, help="phantom slices for the metric part")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--infer-slices", type=int, default=100, help="slices for the inference part")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--models", default="unet,swin_unet")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    ap.add_argument("--checkpoint", help="use this checkpoint's network instead of random weights")
    ap.add_argument("--skip-medpy", action="store_true")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--skip-metrics", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--engines",
        nargs="+",
        metavar="CKPT",
        help="only compare torch fp32 / torch bf16 / ONNX Runtime fp32 on these checkpoints (interleaved)",
    )
    ap.add_argument("--data", help="with --engines: a dataset whose first --volumes val volumes to predict")
    ap.add_argument("--volumes", type=int, default=4, help="with --engines and --data (default 4)")
    ap.add_argument("--repeat", type=int, default=3, help="with --engines: rounds (default 3)")
    ap.add_argument("--_loop", help=argparse.SUPPRESS)  # child: the reference loop of one network
    args = ap.parse_args()
    if args._loop:
        return _run_loop(json.loads(args._loop))
    tune_malloc()  # as the organseg command line does; the reference loop runs in a plain child process
    if args.engines:
        rows = bench_engines(args.engines, args.data, args.volumes, args.batch_size, args.repeat)
        print("\n| network | slices | torch fp32 | torch bf16 | ONNX Runtime fp32 | voxels = torch fp32 |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            m, x, a = r["median_s"], r["speedup_vs_torch_fp32"], r["voxel_agreement_vs_torch_fp32"]
            cells = [f"{m[k]:.1f} s ({x[k]:.2f}x)" for k in ("torch fp32", "torch bf16", "onnxruntime fp32")]
            agree = f"bf16 {100 * a['torch bf16']:.3f} %, ORT {100 * a['onnxruntime fp32']:.3f} %"
            print(f"| {r['model']} | {r['slices']} | " + " | ".join(cells) + f" | {agree} |")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
        return None
    device = resolve_device(args.device)  # organseg's one rule (auto, cpu, cuda, cuda:N)
    image, gt, spacing = phantom_ct(args.slices, args.size)
    results: dict = {"torch_threads": torch.get_num_threads()}
    if not args.skip_metrics:
        results["metrics"] = bench_metrics(gt, args.skip_medpy)
        results["surface"] = bench_surface(gt, spacing, args.skip_medpy)
    if not args.skip_inference:
        if args.checkpoint:
            args.models = "checkpoint"  # one network: the checkpoint's
        results["inference"] = bench_inference(
            image[: args.infer_slices], args.models.split(","), args.batch_size, device, args.checkpoint
        )
    print("\n| part | case | MedPy / loop (s) | ours / batched (s) | speed-up | equal |")
    print("|---|---|---|---|---|---|")
    for r in results.get("metrics", []):
        shape = "x".join(map(str, r["shape"]))
        print(
            f"| metrics | {r['case']} {shape} | {r.get('medpy_s', float('nan')):.2f} | "
            f"{r['ours_s']:.2f} | {r.get('speedup', float('nan')):.1f}x | {r.get('equal', '-')} |"
        )
    for r in results.get("surface", []):
        ref = r.get("medpy_assd_plus_monai_nsd_s", float("nan"))
        agree = f"max diff {r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
        print(
            f"| surface: + NSD, ASSD (HD95 in mm alone) | {r['case']} | {ref:.2f} (MedPy + MONAI) "
            f"| {r['both_protocols_plus_nsd_assd_s']:.2f} ({r['corrected_hd95_only_s']:.2f}) | "
            f"{ref / r['both_protocols_plus_nsd_assd_s']:.1f}x | {agree} |"
        )
    for r in results.get("inference", []):
        print(
            f"| inference fp32 | {r['model']} {r['slices']} slices, {r['device']} | {r['loop_s']:.2f} | "
            f"{r['batched_fp32_s']:.2f} | {r['speedup']:.2f}x | {r['equal']} "
            f"({r['rerun_slices']} re-run) |"
        )
        print(
            f"| inference fp32, no tie check | {r['model']} | {r['loop_s']:.2f} | "
            f"{r['batched_no_tie_check_s']:.2f} | {r['speedup_no_tie_check']:.2f}x | "
            f"{r['no_tie_check_differing_voxels']} voxels differ |"
        )
        if "batched_bf16_s" in r:
            print(
                f"| inference bf16 | {r['model']} | {r['loop_s']:.2f} | {r['batched_bf16_s']:.2f} | "
                f"{r['speedup_bf16']:.2f}x | {100 * r['bf16_voxel_agreement']:.3f} % voxels |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
