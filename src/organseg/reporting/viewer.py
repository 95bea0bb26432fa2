"""A self-contained HTML slice viewer: one file per case that opens from disk in any current browser.

The page holds everything it shows: the image as one JPEG per slice (8-bit after windowing; display only),
the prediction and the ground truth as exact label maps (zlib-compressed bytes that the browser inflates
with its built-in ``DecompressionStream``), the class names and colours (those of the overlay PNGs, from
:func:`organseg.reporting.palette.class_color`) and a table of per-class volumes and metrics. No server, no
network, no external script or font: it works from ``file://`` and can be mailed as an attachment.

Slices are shown in radiological orientation from the volume's direction matrix (anterior up, the patient's
right on the viewer's left, slice 1 the most superior: :mod:`~organseg.imageio.orientation`); a volume
without a direction matrix is shown in its array order, and the page says so.

Size: about 35 kB per 512 x 512 slice (JPEG quality 85) plus base64's third, so a 100-slice CT is ~5 MB. A
volume over ``max_voxels`` is shown subsampled (every n-th pixel in-plane, then every m-th slice) with a note
on the page; the volumes and metrics in the table always come from the full-resolution arrays.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from organseg.errors import DataError
from organseg.fileio import atomic_write_text
from organseg.formatting import json_number
from organseg.imageio.orientation import radiological_orientation
from organseg.imageio.volumes import Geometry
from organseg.reporting.palette import class_color
from organseg.run import ResultsDir

if TYPE_CHECKING:
    from organseg.data.base import Volume

#: the largest volume embedded at full resolution: 192 slices of 512 x 512 (about 9 MB of HTML)
MAX_VOXELS = 192 * 512 * 512
JPEG_QUALITY = 85
VIEWER_DIR = ResultsDir.VIEWER  # results/<name>/viewer/<case>.html, beside the other results files

MetricTable = Mapping[str, Mapping[str, "float | str | None"]]
#: What a metric cell shows for an organ without a defined value under the reference protocol: missed (truth
#: present, nothing predicted: its HD95 would read 0, a perfect boundary), predicted where the truth has none
#: (DSC 1 and HD95 0), or absent from both.
MISSED, FALSE_POSITIVE, ABSENT = "\u2013 (missed)", "\u2013 (false positive)", "\u2013 (absent)"


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{min(255, max(0, round(255 * float(v)))):02x}" for v in rgb[:3])


def _to_uint8(
    image: np.ndarray, window: tuple[float, float] | None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Window an image to 0..255. Without a window, [0, 1] images (organseg's preprocessed input) are shown as
    they are, anything else between its 0.5th and 99.5th percentiles."""
    img = np.asarray(image, dtype=np.float32)
    if window is None:
        lo, hi = float(img.min()), float(img.max())
        if not (lo >= 0.0 and hi <= 1.0):
            lo, hi = (float(v) for v in np.percentile(img, (0.5, 99.5)))
        else:
            lo, hi = 0.0, 1.0
        window = (lo, hi)
    lo, hi = window
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((img - lo) * scale + 0.5, 0, 255).astype(np.uint8), (float(lo), float(hi))


def _strides(shape: Sequence[int], max_voxels: int) -> tuple[int, int]:
    """(in-plane step, slice step): the smallest subsampling that brings the volume under ``max_voxels``;
    in-plane first (to 1/4 at most: a 512 image stays 128 wide), then slices."""
    s, r, c = shape
    step = 1
    while s * math.ceil(r / step) * math.ceil(c / step) > max_voxels and step < 4:
        step += 1
    plane = math.ceil(r / step) * math.ceil(c / step)
    return step, max(1, math.ceil(s * plane / max_voxels))


def _jpeg_data_uri(slice_u8: np.ndarray) -> str:
    from PIL import Image  # noqa: PLC0415 (a dependency of matplotlib, which organseg requires; not on the start-up)

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(slice_u8), mode="L").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _packed_labels(labels: np.ndarray) -> dict[str, Any]:
    dtype = "<u1" if int(labels.max(initial=0)) < 256 else "<u2"
    raw = np.ascontiguousarray(labels, dtype=dtype).tobytes()
    return {
        "dtype": "uint8" if dtype == "<u1" else "uint16",
        "zlib": base64.b64encode(zlib.compress(raw, 6)).decode("ascii"),
    }


def _label_maps(
    path: Path, image: np.ndarray, label: np.ndarray | None, truth: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The prediction and ground truth given, checked against the image, as integer arrays."""
    if image.ndim != 3 or min(image.shape) < 1:
        raise DataError(f"{path}: the viewer needs a (D, H, W) image, got shape {image.shape}")
    for what, arr in (("label", label), ("truth", truth)):
        if arr is not None and np.shape(arr) != image.shape:
            raise DataError(f"{path}: {what} shape {np.shape(arr)} differs from image shape {image.shape}")
    maps = {k: np.asarray(v) for k, v in (("label", label), ("truth", truth)) if v is not None}
    maps = {k: a.astype(np.uint8) if a.dtype == bool else a for k, a in maps.items()}
    for what, arr in maps.items():
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or int(arr.min()) < 0):
            raise DataError(f"{path}: {what} must hold non-negative integer class ids (dtype {arr.dtype})")
    return maps


def _cell(value: float | str | None) -> float | str | None:
    """A metric cell for the page: a number (null when undefined, shown as a dash) or a note shown as is."""
    return value if isinstance(value, str) else json_number(value)


def _class_table(
    maps: Mapping[str, np.ndarray],
    class_names: Sequence[str] | None,
    spacing: Sequence[float] | None,
    colors: Sequence[Sequence[float]] | None,
    metrics: MetricTable,
) -> tuple[list[str], list[dict[str, Any]]]:
    """(metric columns, one row per class shown): the table comes from the full-resolution arrays, before
    any subsampling for display."""
    n_classes = max([len(class_names or ())] + [int(a.max(initial=0)) + 1 for a in maps.values()])
    names = list(class_names or ["background"])
    names += [f"class {i}" for i in range(len(names), n_classes)]
    voxel_ml = float(np.prod(spacing)) / 1000.0 if spacing is not None else None
    counts = {k: np.bincount(a.ravel(), minlength=n_classes) for k, a in maps.items()}
    metric_cols: list[str] = []
    for row in metrics.values():
        metric_cols += [c for c in row if c not in metric_cols]
    classes = []
    for i in range(1, n_classes):
        present = {k: int(c[i]) for k, c in counts.items()}
        if not any(present.values()) and names[i] not in metrics:
            continue  # e.g. most of TotalSegmentator's 117 classes in one abdominal scan
        color = colors[i] if colors is not None and i < len(colors) else class_color(i)
        classes.append(
            {
                "index": i,
                "name": names[i],
                "color": _hex(color),
                "voxels": present,
                "ml": {k: (None if voxel_ml is None else round(n * voxel_ml, 2)) for k, n in present.items()},
                "metrics": {c: _cell(metrics.get(names[i], {}).get(c)) for c in metric_cols},
            }
        )
    return metric_cols, classes


def _display_data(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    geometry: Geometry | None,
    spacing: Sequence[float] | None,
    window: tuple[float, float] | None,
    max_voxels: int,
) -> dict[str, Any]:
    """The page's slices in radiological orientation, subsampled under ``max_voxels``, and what the page
    must know to show them (pixel aspect, file slice numbers, window, a note on any subsampling)."""
    orient = radiological_orientation(geometry)
    shown = orient.apply(image)
    step, slice_step = _strides(shown.shape, max_voxels)
    sub = (slice(None, None, slice_step), slice(None, None, step), slice(None, None, step))
    grey, used_window = _to_uint8(shown[sub], window)
    disp_spacing = orient.spacing(spacing) if spacing is not None else (1.0, 1.0, 1.0)
    n_display = shown.shape[0]
    note = ""
    if step > 1 or slice_step > 1:
        parts = [f"1 pixel in {step} in-plane"] if step > 1 else []
        parts += [f"1 slice in {slice_step} of {n_display}"] if slice_step > 1 else []
        note = (
            f"Shown subsampled to stay under {max_voxels:,} voxels: {', '.join(parts)}. "
            "Volumes and metrics are from the full resolution."
        )
    return {
        "shape": list(grey.shape),
        "spacing": [disp_spacing[0] * slice_step, disp_spacing[1] * step, disp_spacing[2] * step],
        "has_spacing": spacing is not None,
        "radiological": orient.radiological,
        "file_slice": [orient.array_index(z, image.shape) for z in range(0, n_display, slice_step)],
        "slice_axis": orient.axes[0],
        "window": list(used_window),
        "note": note,
        "images": [_jpeg_data_uri(s) for s in grey],
        "label": _packed_labels(orient.apply(maps["label"])[sub]) if "label" in maps else None,
        "truth": _packed_labels(orient.apply(maps["truth"])[sub]) if "truth" in maps else None,
    }


def write_viewer(
    path: str | Path,
    image: np.ndarray,
    *,
    label: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    geometry: Geometry | None = None,
    spacing: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    colors: Sequence[Sequence[float]] | None = None,
    metrics: MetricTable | None = None,
    title: str = "",
    window: tuple[float, float] | None = None,
    max_voxels: int = MAX_VOXELS,
) -> Path:
    """Write one self-contained HTML page to scroll through ``image`` with ``label`` (the prediction) and
    ``truth`` (the ground truth) overlaid.

    ``image``, ``label`` and ``truth`` are (D, H, W) in the file's own order; ``geometry`` (or, without a
    direction matrix, ``spacing`` (z, y, x) mm) gives the orientation, the pixel aspect and the volumes in mL.
    ``colors`` (RGB 0..1 per class index, background first) defaults to the overlay PNGs' palette;
    ``metrics`` maps a class name to its columns (e.g. ``{"liver": {"DSC": 0.95, "HD95 mm": 3.1}}``);
    ``window`` (lo, hi) maps intensities to grey (default: see :func:`_to_uint8`). Written atomically.
    """
    path = Path(path)
    image = np.asarray(image)
    maps = _label_maps(path, image, label, truth)
    if geometry is not None:
        spacing = geometry.spacing
    metric_cols, classes = _class_table(maps, class_names, spacing, colors, metrics or {})
    shown = _display_data(image, maps, geometry, spacing, window, max_voxels)
    data = {
        "title": title,
        **{
            k: shown[k]
            for k in (
                "shape",
                "spacing",
                "has_spacing",
                "radiological",
                "file_slice",
                "slice_axis",
                "window",
                "note",
            )
        },
        "metric_columns": metric_cols,
        "classes": classes,
        **{k: shown[k] for k in ("images", "label", "truth")},
    }
    # "</" would end the <script> element early; JSON allows the escaped form.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    page = _PAGE.replace("__TITLE__", html.escape(title or "organseg viewer")).replace("__DATA__", payload)
    atomic_write_text(path, page)
    return path


def viewer_name(case_id: str) -> str:
    """File name of a case's viewer page: the case id with anything but letters, digits, '-', '_', '.'
    replaced, so that an id never reaches outside the viewer folder."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case_id).lstrip(".")
    return f"{safe or 'case'}.html"


def volume_geometry(volume: Volume) -> Geometry | None:
    """The :class:`Geometry` of an evaluation volume when it knows its direction matrix, else None (the
    page then shows the array order rather than guess an orientation)."""
    return Geometry.of_volume(volume) if volume.meta.get("direction") is not None else None


def case_metric_cells(
    prediction: np.ndarray,
    truth: np.ndarray | None,
    class_names: Sequence[str],
    reference_metrics: np.ndarray,
    hd_unit: str,
) -> dict[str, dict[str, float | str]]:
    """The viewer table's DSC and HD95 of each foreground class: the reference protocol's numbers where both
    the truth and the prediction hold the organ. The reference's edge values are not shown as numbers, because
    they read as results: a missed organ (truth present, prediction empty) shows DSC 0 and HD95 "– (missed)",
    not 0; an organ predicted where the truth has none shows "– (false positive)" for DSC (the reference
    scores it 1) and "–" for HD95; an organ absent from both shows "– (absent)"."""
    hd = f"HD95 ({hd_unit})"
    n = len(class_names)
    pred_count = np.bincount(np.asarray(prediction).ravel(), minlength=n)
    true_count = np.bincount(np.asarray(truth).ravel(), minlength=n) if truth is not None else None
    cells: dict[str, dict[str, float | str]] = {}
    for i, name in enumerate(class_names[1:], start=1):
        dsc, hd95 = float(reference_metrics[i - 1, 0]), float(reference_metrics[i - 1, 1])
        if true_count is not None:
            in_truth, in_pred = bool(true_count[i]), bool(pred_count[i])
            if in_truth and not in_pred:
                dsc, hd95 = 0.0, MISSED
            elif in_pred and not in_truth:
                dsc, hd95 = FALSE_POSITIVE, "\u2013"
            elif not in_pred:
                dsc, hd95 = ABSENT, ABSENT
        cells[name] = {"DSC": dsc, hd: hd95}
    return cells


class CaseViewers:
    """``on_case`` callback for :func:`~organseg.evaluation.evaluate.evaluate_dataset`: one viewer page per
    test case, written as the case is scored, so no prediction stays in memory. The table has the case's
    reference-protocol DSC and HD95 (voxels or mm, as the case's spacing allows) per class."""

    def __init__(self, folder: str | Path, class_names: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.class_names = list(class_names)
        self.written: list[Path] = []

    def __call__(self, volume: Volume, prediction: np.ndarray, reference_metrics: np.ndarray) -> None:
        hd_unit = "mm" if volume.spacing is not None else "voxels"
        metrics = case_metric_cells(prediction, volume.label, self.class_names, reference_metrics, hd_unit)
        self.written.append(
            write_viewer(
                self.folder / viewer_name(volume.case_id),
                volume.image,
                label=prediction,
                truth=volume.label,
                geometry=volume_geometry(volume),
                spacing=volume.spacing,
                class_names=self.class_names,
                metrics=metrics,
                title=f"{volume.case_id}: prediction and ground truth",
            )
        )


def chain(*callbacks: Callable[..., None] | None) -> Callable[..., None]:
    """Several ``on_case`` callbacks as one (None entries skipped)."""
    live = [cb for cb in callbacks if cb is not None]

    def on_case(*args: Any) -> None:
        for cb in live:
            cb(*args)

    return on_case


_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: #16181c; color: #e6e6e6; }
  header { padding: 8px 16px; border-bottom: 1px solid #333; }
  h1 { font-size: 17px; margin: 0; }
  #main { display: flex; flex-wrap: wrap; gap: 20px; padding: 14px 16px; align-items: flex-start; }
  #stage { position: relative; display: inline-block; padding: 20px; background: #000; }
  #view { display: block; image-rendering: pixelated; cursor: ns-resize; }
  .mark { position: absolute; color: #ffd24d; font-weight: bold; font-size: 13px; }
  #mA { top: 2px; left: 50%; } #mP { bottom: 2px; left: 50%; }
  #mR { left: 5px; top: 50%; } #mL { right: 5px; top: 50%; }
  .controls { margin-top: 10px; display: grid; grid-template-columns: auto 1fr auto; gap: 6px 10px;
              align-items: center; max-width: 640px; }
  input[type=range] { width: 100%; }
  table { border-collapse: collapse; font-size: 13px; }
  th, td { padding: 3px 8px; border-bottom: 1px solid #333; text-align: right; }
  th { color: #aaa; font-weight: normal; }
  td.name, th.name { text-align: left; }
  .swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px; }
  .note { color: #aaa; font-size: 12px; max-width: 640px; }
  #error { color: #ff7070; }
  button { background: #2a2d33; color: #e6e6e6; border: 1px solid #444; border-radius: 3px;
           padding: 2px 8px; }
</style>
</head>
<body>
<header><h1 id="title"></h1><div class="note" id="orientation"></div></header>
<div id="main">
  <div>
    <div id="stage">
      <canvas id="view" tabindex="0" data-slice="0"></canvas>
      <span class="mark" id="mA">A</span><span class="mark" id="mP">P</span>
      <span class="mark" id="mR">R</span><span class="mark" id="mL">L</span>
    </div>
    <div class="controls">
      <label for="slice">Slice</label><input type="range" id="slice" min="0" value="0">
      <span id="slice-index"></span>
      <label for="opacity">Opacity</label><input type="range" id="opacity" min="0" max="100" value="50">
      <span id="opacity-value">50%</span>
    </div>
    <div class="controls" style="grid-template-columns: auto auto auto auto;">
      <label><input type="checkbox" id="show-pred" checked> prediction (filled)</label>
      <label id="truth-toggle"><input type="checkbox" id="show-truth" checked> ground truth (outline)</label>
      <button id="all-on" type="button">all classes</button>
      <button id="all-off" type="button">none</button>
    </div>
    <p class="note">Scroll with the slider, the mouse wheel over the image, or the arrow / Page keys.
      <span id="note"></span></p>
    <p class="note" id="error"></p>
  </div>
  <div>
    <table id="classes"><thead><tr id="head"></tr></thead><tbody></tbody></table>
    <p class="note" id="table-note"></p>
  </div>
</div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const [S, R, C] = D.shape;
  const $ = (id) => document.getElementById(id);
  const canvas = $("view"), ctx = canvas.getContext("2d", { willReadFrequently: true });
  const slider = $("slice"), opacity = $("opacity");
  canvas.width = C; canvas.height = R;
  // Physical aspect: rows and columns may have different spacings; fit the longer side to ~640 px.
  const wmm = C * D.spacing[2], hmm = R * D.spacing[1];
  const scale = Math.min(640 / wmm, 640 / hmm);
  canvas.style.width = Math.round(wmm * scale) + "px";
  canvas.style.height = Math.round(hmm * scale) + "px";
  slider.max = String(S - 1);
  $("title").textContent = D.title || "organseg viewer";
  document.title = D.title || "organseg viewer";
  $("note").textContent = D.note;
  if (D.radiological) {
    $("orientation").textContent = "Radiological orientation: anterior up, the patient's right on the left " +
      "(R), slice 1 the most superior.";
  } else {
    $("orientation").textContent = "Array order as stored (the file has no direction matrix): " +
      "orientation unknown.";
    for (const m of ["mA", "mP", "mR", "mL"]) $(m).style.display = "none";
  }

  const enabled = new Uint8Array(65536);
  const rgb = new Uint8Array(65536 * 3);
  for (const c of D.classes) {
    enabled[c.index] = 1;
    for (let k = 0; k < 3; k++) rgb[3 * c.index + k] = parseInt(c.color.substr(1 + 2 * k, 2), 16);
  }

  // ---- class table: toggle, colour, name, volumes, metrics
  const fmt = (v, d) => (v === null || v === undefined) ? "\u2013" :
    (typeof v === "string" ? v : Number(v).toFixed(d));
  const unit = D.has_spacing ? "mL" : "voxels";
  const head = $("head");
  const cols = ["", "", "class"];
  if (D.label) cols.push("predicted " + unit);
  if (D.truth) cols.push("truth " + unit);
  for (const c of cols.concat(D.metric_columns)) {
    const th = document.createElement("th"); th.textContent = c;
    if (c === "class") th.className = "name";
    head.appendChild(th);
  }
  const tbody = document.querySelector("#classes tbody");
  for (const c of D.classes) {
    const tr = document.createElement("tr");
    const box = document.createElement("input");
    box.type = "checkbox"; box.checked = true; box.className = "class-toggle";
    box.dataset.index = String(c.index); box.setAttribute("aria-label", "show " + c.name);
    box.addEventListener("change", () => { enabled[c.index] = box.checked ? 1 : 0; draw(); });
    const cells = [box];
    const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = c.color;
    cells.push(sw, c.name);
    const vol = (k) => D.has_spacing ? fmt(c.ml[k], 1) : String(c.voxels[k]);
    if (D.label) cells.push(vol("label"));
    if (D.truth) cells.push(vol("truth"));
    for (const m of D.metric_columns) cells.push(fmt(c.metrics[m], 3));
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      if (typeof v === "string") td.textContent = v; else td.appendChild(v);
      if (i === 2) td.className = "name";
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
  }
  if (!D.classes.length) $("table-note").textContent = "No foreground class in this volume.";
  const setAll = (on) => {
    for (const b of document.querySelectorAll(".class-toggle")) {
      b.checked = on; enabled[Number(b.dataset.index)] = on ? 1 : 0;
    }
    draw();
  };
  $("all-on").addEventListener("click", () => setAll(true));
  $("all-off").addEventListener("click", () => setAll(false));

  // ---- data: slices decoded on demand, label maps inflated once
  const images = new Array(S);
  function image(z) {
    if (!images[z]) {
      const img = new Image();
      img.onload = () => { if (Number(slider.value) === z) draw(); };
      img.onerror = () => { $("error").textContent = "slice " + (z + 1) + " could not be decoded"; };
      img.src = D.images[z];
      images[z] = img;
    }
    return images[z];
  }
  async function inflate(packed) {
    if (!packed) return null;
    const bytes = Uint8Array.from(atob(packed.zlib), (ch) => ch.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const buf = await new Response(stream).arrayBuffer();
    return packed.dtype === "uint16" ? new Uint16Array(buf) : new Uint8Array(buf);
  }
  let pred = null, truth = null;

  function draw() {
    const z = Number(slider.value);
    const img = image(z);
    canvas.dataset.slice = String(z);
    // the one slice caption of every picture (organseg.formatting.slice_caption)
    $("slice-index").textContent = "slice " + (z + 1) + " / " + S + " (file slice " + D.file_slice[z] + ")";
    if (!img.complete || !img.naturalWidth) return;  // drawn again on load
    ctx.drawImage(img, 0, 0, C, R);
    const frame = ctx.getImageData(0, 0, C, R), px = frame.data;
    const a = Number(opacity.value) / 100, off = z * R * C;
    if (pred && $("show-pred").checked && a > 0) {
      for (let i = 0; i < R * C; i++) {
        const l = pred[off + i];
        if (l && enabled[l]) {
          for (let k = 0; k < 3; k++) {
            px[4 * i + k] = Math.round((1 - a) * px[4 * i + k] + a * rgb[3 * l + k]);
          }
        }
      }
    }
    if (truth && $("show-truth").checked) {
      // outline: a truth pixel with a 4-neighbour of another class
      for (let y = 0; y < R; y++) {
        for (let x = 0; x < C; x++) {
          const i = y * C + x, l = truth[off + i];
          if (!l || !enabled[l]) continue;
          const edge = x === 0 || x === C - 1 || y === 0 || y === R - 1 || truth[off + i - 1] !== l ||
            truth[off + i + 1] !== l || truth[off + i - C] !== l || truth[off + i + C] !== l;
          if (edge) for (let k = 0; k < 3; k++) px[4 * i + k] = rgb[3 * l + k];
        }
      }
    }
    ctx.putImageData(frame, 0, 0);
  }
  function go(z) {
    slider.value = String(Math.max(0, Math.min(S - 1, z)));
    draw();
  }
  slider.addEventListener("input", draw);
  opacity.addEventListener("input", () => { $("opacity-value").textContent = opacity.value + "%"; draw(); });
  $("show-pred").addEventListener("change", draw);
  $("show-truth").addEventListener("change", draw);
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    go(Number(slider.value) + Math.sign(e.deltaY));
  }, { passive: false });
  document.addEventListener("keydown", (e) => {
    if (e.target && e.target.tagName === "INPUT" && e.target.type === "range") return;  // its own keys
    const z = Number(slider.value);
    const keys = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
    const step = keys[e.key];
    if (step !== undefined) { e.preventDefault(); go(z + step); }
    else if (e.key === "Home") go(0);
    else if (e.key === "End") go(S - 1);
  });

  if (!D.truth) $("truth-toggle").style.display = "none";  // a prediction without ground truth
  go(Math.floor(S / 2));
  Promise.all([inflate(D.label), inflate(D.truth)]).then(([p, t]) => {
    pred = p; truth = t;
    if ((pred && pred.length !== S * R * C) || (truth && truth.length !== S * R * C)) {
      throw new Error("label data do not match the image size");
    }
    return image(Number(slider.value)).decode();
  }).then(() => { draw(); document.body.dataset.ready = "1"; })
    .catch((err) => { $("error").textContent = "Cannot show the label maps: " + err.message; });
})();
</script>
</body>
</html>
"""
