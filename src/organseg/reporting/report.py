"""``report.md`` with the results table and pictures: overlays, per-organ DSC bars, training curves.

Figures are drawn with matplotlib's Agg backend (no display needed) and written atomically. Everything is read
from files in the run folder, so a report can be rebuilt at any time without the data or the network:

* ``results/<name>/summary.json`` -> table and DSC bars,
* ``results/<name>/overlay_slices.npz`` (written by ``organseg test``) -> overlays,
* ``metrics.jsonl`` -> training curves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from organseg.data.base import Volume
from organseg.errors import DataError
from organseg.fileio import (
    atomic_write,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    read_json,
)
from organseg.formatting import plot_value, pyplot, save_figure, slice_caption
from organseg.imageio.orientation import radiological_orientation
from organseg.reporting.palette import class_color, colorize
from organseg.reporting.tables import PUBLISHED, columns, dataset_kind, results_table
from organseg.reporting.viewer import VIEWER_DIR, viewer_name
from organseg.results import ResultsSummary
from organseg.run import ResultsDir, RunDir, read_test_summary

if TYPE_CHECKING:
    from organseg.imageio.volumes import Geometry


def _write_member(zf: zipfile.ZipFile, name: str, value: np.ndarray) -> None:
    """One ``NAME.npy`` member, as ``np.savez_compressed`` writes it."""
    info = zipfile.ZipInfo(f"{name}.npy")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


class OverlayCollector:
    """``on_case`` callback for :func:`~organseg.evaluation.evaluate.evaluate_dataset`: keeps, per case, the
    axial slice with the most ground-truth foreground (image, truth, prediction) and the case's mean DSC.

    The slices go to a temporary file as each case comes (a 512² case's three slices are 1.5 MB: a thousand
    test volumes held 1.5 GB until the end); :attr:`items` keeps the rest. :meth:`save` writes the file,
    once."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._spool = tempfile.TemporaryFile(prefix="organseg-overlays-")  # noqa: SIM115 (closed by save)
        self._zip = zipfile.ZipFile(self._spool, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)

    def __call__(self, volume: Volume, prediction: np.ndarray, reference_metrics: np.ndarray) -> None:
        # Slices are kept as radiologists view them (imageio.orientation); "z" is the slice's index
        # in that display order, which is the array index when the volume has no direction matrix, "file_z"
        # its index along the file's slice axis and "count" the number of slices (the viewer's caption).
        orient = radiological_orientation(volume.meta.get("direction"))
        label = volume.label if volume.label is not None else prediction
        label_d = orient.apply(np.asarray(label))
        area = (label_d > 0).reshape(label_d.shape[0], -1).sum(axis=1)
        z = int(np.argmax(area))
        _, row_mm, col_mm = orient.spacing(volume.spacing) if volume.spacing is not None else (1.0, 1.0, 1.0)
        n = len(self.items)
        image = np.array(orient.apply(np.asarray(volume.image))[z], dtype=np.float32)
        _write_member(self._zip, f"image_{n}", image)
        _write_member(self._zip, f"label_{n}", np.array(label_d[z], dtype=np.uint8))
        _write_member(self._zip, f"pred_{n}", np.array(orient.apply(np.asarray(prediction))[z], np.uint8))
        self.items.append(
            {
                "case": volume.case_id,
                "z": z,
                "file_z": orient.array_index(z, np.shape(label)),
                "count": int(label_d.shape[0]),
                "dice": float(np.mean(reference_metrics[:, 0])),
                "aspect": float(row_mm / col_mm),
            }
        )

    def save(self, path: str | Path) -> None:
        """The slices and, last, the cases' records (the members ``np.savez_compressed`` of them all has),
        put in place as ``path`` atomically."""
        meta: dict[str, np.ndarray] = {
            "cases": np.array([it["case"] for it in self.items]),
            "z": np.array([it["z"] for it in self.items], dtype=np.int64),
            "dice": np.array([it["dice"] for it in self.items], dtype=np.float64),
            "aspect": np.array([it.get("aspect", 1.0) for it in self.items], dtype=np.float64),
            "file_z": np.array([it.get("file_z", -1) for it in self.items], dtype=np.int64),
            "count": np.array([it.get("count", -1) for it in self.items], dtype=np.int64),
        }
        for key, value in meta.items():
            _write_member(self._zip, key, value)
        self._zip.close()

        def copy(tmp: Path) -> None:
            self._spool.seek(0)
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(self._spool, fh, 1 << 20)
                fh.flush()
                os.fsync(fh.fileno())

        atomic_write(path, copy)
        self._spool.close()


def load_overlays(path: str | Path, *, only: int | None = None) -> list[dict[str, Any]]:
    """The report slices ``organseg test`` kept; DataError naming the file when it is damaged. With ``only``,
    the slices of the ``only`` :func:`representative` cases alone are read (a report draws three of them)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            n = len(f["cases"])
            # files written before the aspect was kept show square pixels, as they did then
            aspect = f["aspect"] if "aspect" in f.files else np.ones(n)
            # files written before the file index and count were kept (-1) show the slice number alone
            file_z = f["file_z"] if "file_z" in f.files else np.full(n, -1)
            count = f["count"] if "count" in f.files else np.full(n, -1)
            cases, zs, dice = f["cases"], f["z"], f["dice"]
            items = [
                {
                    "index": i,
                    "case": str(cases[i]),
                    "z": int(zs[i]),
                    "dice": float(dice[i]),
                    "aspect": float(aspect[i]),
                    "file_z": int(file_z[i]),
                    "count": int(count[i]),
                }
                for i in range(n)
            ]
            if only is not None:
                items = sorted(representative(items, only), key=lambda it: it["index"])
            for it in items:
                i = it.pop("index")
                it.update(image=f[f"image_{i}"], label=f[f"label_{i}"], pred=f[f"pred_{i}"])
            return items
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # A truncated .npz is a damaged zip archive; say so in one line instead of zipfile's traceback.
        raise DataError(f"{path}: cannot read overlay slices, truncated or damaged ({exc})") from None


def representative(items: Sequence[dict[str, Any]], k: int = 3) -> list[dict[str, Any]]:
    """``k`` cases spread from the best to the worst mean DSC (best, median, worst for k=3)."""
    order = sorted(items, key=lambda it: -it["dice"])
    if len(order) <= k:
        return list(order)
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, k)).astype(int))
    return [order[i] for i in picks]


def _caption(item: dict[str, Any]) -> str:
    """The slice caption of a kept overlay slice (:func:`organseg.formatting.slice_caption`); a file written
    before the count and the file index were kept gives the display number alone."""
    if item.get("count", -1) < 0:
        return f"slice {item['z'] + 1}"
    return slice_caption(item["z"], item["count"], item["file_z"] if item.get("file_z", -1) >= 0 else None)


def plot_overlays(items: Sequence[dict[str, Any]], class_names: Sequence[str], path: str | Path) -> Path:
    """Rows of (image, ground truth, prediction) with a legend of the organ names."""
    plt = pyplot()
    from matplotlib.patches import Patch  # noqa: PLC0415 (matplotlib: not on the command line's start-up)

    rows = representative(items)
    if not rows:
        raise DataError(f"{path}: no slices to draw")
    fig, axes = plt.subplots(len(rows), 3, figsize=(9.6, 3.3 * len(rows)), squeeze=False)
    n_cls = len(class_names)
    for r, it in enumerate(rows):
        panels = (("image", None), ("ground truth", it["label"]), ("prediction", it["pred"]))
        for c, (title, lab) in enumerate(panels):
            ax = axes[r, c]
            aspect = it.get("aspect", 1.0)
            ax.imshow(it["image"], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect=aspect)
            if lab is not None:
                ax.imshow(colorize(lab, n_cls), alpha=0.5, interpolation="nearest", aspect=aspect)
            note = f" (DSC {100 * it['dice']:.1f})" if c == 2 else ""
            ax.set_title(f"{it['case']} {_caption(it)}: {title}{note}", fontsize=8)
            ax.axis("off")
    handles = [Patch(color=class_color(c), label=class_names[c]) for c in range(1, n_cls)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 if len(rows) > 1 else 0.1, 1, 1))
    return save_figure(fig, Path(path))


def plot_prediction(
    image: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    geometry: Geometry | None = None,
    title: str = "",
    k: int = 3,
) -> Path:
    """``k`` slices with the most predicted foreground, image and overlay side by side, and a legend.

    ``image`` (in [0, 1]) and ``pred`` are (D, H, W) in the file's own order; with ``geometry`` the slices are
    shown in radiological orientation (anterior up, patient's right on the left, see
    :mod:`organseg.imageio.orientation`) and with the true pixel aspect, whatever order the file stores.
    Each title names its slice as every picture does (:func:`organseg.formatting.slice_caption`): the number
    in that display order from 1 (superior first). The index in the file is left out here, so that every
    voxel order of one scan draws the same picture (the viewer gives it).
    """
    from matplotlib.patches import Patch  # noqa: PLC0415 (matplotlib: not on the command line's start-up)

    plt = pyplot()
    orient = radiological_orientation(geometry)
    image_d, pred_d = orient.apply(np.asarray(image)), orient.apply(np.asarray(pred))
    _, row_mm, col_mm = orient.spacing(geometry.spacing) if geometry is not None else (1.0, 1.0, 1.0)
    aspect = row_mm / col_mm
    area = (pred_d > 0).reshape(pred_d.shape[0], -1).sum(axis=1)
    zs = sorted(np.argsort(-area, kind="stable")[: min(k, pred_d.shape[0])].tolist())
    fig, axes = plt.subplots(len(zs), 2, figsize=(7, 3.3 * len(zs)), squeeze=False)
    for r, z in enumerate(zs):
        for c in range(2):
            ax = axes[r, c]
            ax.imshow(image_d[z], cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect=aspect)
            if c:
                overlay = colorize(pred_d[z], len(class_names))
                ax.imshow(overlay, alpha=0.5, interpolation="nearest", aspect=aspect)
            caption = slice_caption(z, pred_d.shape[0])
            ax.set_title(f"{title} {caption}" + (": prediction" if c else ""), fontsize=8)
            ax.axis("off")
    present = [c for c in range(1, len(class_names)) if np.any(pred_d == c)]
    handles = [Patch(color=class_color(c), label=class_names[c]) for c in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, Path(path))


def plot_dice_bars(summary: ResultsSummary, path: str | Path, model_name: str | None = None) -> Path:
    """Per-organ DSC (%) under both protocols, with the published row of the same network when known."""
    plt = pyplot()
    class_names = summary["class_names"]
    cols = columns(class_names)
    ref = summary["reference"]["per_class"]
    corr = summary["corrected"]["per_class"]
    series = [
        ("ours, reference", [plot_value(ref[class_names[i]]["dice"], 100) for _, i in cols]),
        ("ours, corrected", [plot_value(corr[class_names[i]]["dice"], 100) for _, i in cols]),
    ]
    kind = dataset_kind(class_names)
    target = PUBLISHED[kind]["model_row"].get(model_name or "") if kind else None
    if target:
        row = PUBLISHED[kind]["rows"][target]
        series.append((f"{target} (paper)", [np.nan if row.get(t) is None else row[t] for t, _ in cols]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cols) + 2), 3.6))
    x = np.arange(len(cols))
    width = 0.8 / len(series)
    for k, (name, vals) in enumerate(series):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, vals, width, label=name)
        for b, v in zip(bars, vals, strict=True):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.5, f"{v:.0f}", ha="center", va="bottom", size=6)
    ax.set_xticks(x, [t for t, _ in cols], rotation=20, fontsize=8)
    ax.set_ylabel("DSC (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Per-organ DSC, {summary['split']} split ({summary['cases']} cases)", fontsize=9)
    # Below the axis, so it never hides a bar.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(series), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, Path(path))


def plot_training_curves(records: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Loss (total, CE, Dice) and learning rate per iteration, validation mean DSC per epoch. None when the
    log has no training records."""
    train = [r for r in records if r.get("kind") == "train" and "iter" in r]
    val = [r for r in records if r.get("kind") == "val" and r.get("mean_dice") is not None]
    if not train:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    it = [r["iter"] for r in train]
    for key, style in (("loss", "-"), ("ce", "--"), ("dice", ":")):
        if all(key in r for r in train):
            axes[0].plot(it, [r[key] for r in train], style, label=key, linewidth=1)
    axes[0].set_xlabel("iteration")
    axes[0].set_title("training loss", fontsize=9)
    axes[0].legend(fontsize=7)
    if all("lr" in r for r in train):
        axes[1].plot(it, [r["lr"] for r in train], linewidth=1)
    axes[1].set_xlabel("iteration")
    axes[1].set_title("learning rate", fontsize=9)
    if val:
        ep = [r.get("epoch", n) + 1 for n, r in enumerate(val)]
        mean = [100 * r["mean_dice"] for r in val]
        axes[2].plot(ep, mean, "o-", color="black", linewidth=1.2, markersize=3, label="mean")
        names = list(val[-1].get("per_class", {}))
        for k, name in enumerate(names, start=1):  # the overlays' colour of each class
            vals = [
                100 * r["per_class"][name]["dice"] if name in r.get("per_class", {}) else np.nan for r in val
            ]
            # markers too: a run validated once (a time-budget run) has one point per class, no line
            axes[2].plot(
                ep, vals, ".-", linewidth=0.8, markersize=4, alpha=0.8, color=class_color(k), label=name
            )
        axes[2].legend(fontsize=6, ncol=2)
        axes[2].xaxis.get_major_locator().set_params(integer=True)
    else:
        axes[2].text(0.5, 0.5, "no validation records", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set_xlabel("epoch")
    axes[2].set_title("validation DSC (%), reference protocol", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def _results_folders(root: Path) -> list[Path]:
    # A run folder has config.yaml and its own (training) summary.json; only a results folder is its own.
    if ResultsDir(root).exists() and not RunDir(root).is_run():
        return [root]
    return [r.path for r in RunDir(root).all_results()]


def _model_name(root: Path, summary: ResultsSummary) -> str | None:
    # A damaged or missing configuration only loses the name.
    return summary.get("model_name") or RunDir(root).model_name


def _viewer_links(root: Path, folder: Path) -> list[str]:
    """Markdown links to the cases' HTML viewer pages that ``organseg test`` wrote (cases of this result
    only, in per_case.json's order; pages of an earlier run in the same folder are not listed)."""
    per_case = ResultsDir(folder).file(ResultsDir.PER_CASE_JSON)
    if not (folder / VIEWER_DIR).is_dir() or not per_case.is_file():
        return []
    cases = [str(c["case"]) for c in read_json(per_case, kind=list) if isinstance(c, dict) and "case" in c]
    pages = [(c, folder / VIEWER_DIR / viewer_name(c)) for c in cases]
    links = [f"[{c}]({p.relative_to(root).as_posix()})" for c, p in pages if p.is_file()]
    if not links:
        return []
    return ["Slice viewer per case (self-contained HTML, opens from disk): " + ", ".join(links) + ".", ""]


def write_report(root: str | Path) -> Path:
    """Write ``report.md`` and ``report/*.png`` for a run folder (all its results folders and its training
    log) or for a single results folder (one with ``summary.json``). Returns the path of ``report.md``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such run or results folder")
    folders = _results_folders(root)
    run = RunDir(root)
    log = run.metrics_file
    if not folders and not log.is_file():
        raise DataError(f"{root}: nothing to report (no results/*/summary.json and no metrics.jsonl)")
    fig_dir = run.report_dir
    check_output_file(run.report_file, what="")
    check_output_dir(fig_dir, what="")
    lines = [f"# organseg report: {root.resolve().name}", ""]
    for folder in folders:
        summary = read_test_summary(ResultsDir(folder).summary_file)
        model = _model_name(root, summary)
        name = folder.name if folder != root else "results"
        lines += [f"## {name}", ""]
        facts = [f"{summary['cases']} {summary['split']} cases"]
        for key in ("model_name", "checkpoint", "data", "precision", "device"):
            if summary.get(key):
                facts.append(f"{key.replace('_', ' ')}: `{summary[key]}`")
        lines += ["; ".join(facts) + ".", ""]
        if summary.get("precision_note"):  # which path predicted, and its measured agreement with fp32
            lines += [f"Inference: {summary['precision_note']}.", ""]
        lines += [results_table(summary, model), ""]
        bars = plot_dice_bars(summary, fig_dir / f"{name}_dice.png", model)
        lines += [f"![per-organ DSC]({bars.relative_to(root).as_posix()})", ""]
        overlay_file = ResultsDir(folder).file(ResultsDir.OVERLAYS)
        if overlay_file.is_file():
            items = load_overlays(overlay_file, only=3)
            if items:
                png = plot_overlays(items, summary["class_names"], fig_dir / f"{name}_overlays.png")
                lines += [
                    "Overlays: the slice with the most ground truth of the best, median and worst case "
                    "(left image, middle ground truth, right prediction).",
                    "",
                    f"![overlays]({png.relative_to(root).as_posix()})",
                    "",
                ]
        lines += _viewer_links(root, folder)
    if log.is_file():
        curves = plot_training_curves(run.metrics(), fig_dir / "training_curves.png")
        if curves is not None:
            lines += ["## Training", "", f"![training curves]({curves.relative_to(root).as_posix()})", ""]
    out = run.report_file
    atomic_write_text(out, "\n".join(lines))
    return out
