"""Per-case, per-class Dice and HD95 under two protocols.

``reference``
    Exactly what TransUNet / Swin-Unet ``utils.calculate_metric_percase`` computes: MedPy ``dc`` and ``hd95``
    on the whole 3-D volume, surfaces by connectivity-1 erosion, distances in **voxel units** (the reference
    calls MedPy without a spacing, so ``spacing`` is ignored under this protocol on purpose), and the
    reference edge rules:

    ===================================  ==============
    prediction present, truth present    (Dice, HD95)
    prediction present, truth empty      (1, 0)
    prediction empty (truth either)      (0, 0)
    ===================================  ==============

``corrected``
    The same Dice and HD95 definitions with three changes:

    * HD95 in millimetres from ``spacing`` (z, y, x); in voxel units only when ``spacing`` is None.
    * An organ absent from the ground truth is not scored: (NaN, NaN) whatever the prediction holds. A
      prediction there is a false positive, counted through :func:`presence`, not a perfect score.
    * A missed organ (truth present, prediction empty) scores Dice 0 and HD95 NaN: it lowers the mean Dice,
      is counted as *missed*, and stays out of the HD95 mean instead of entering it as a perfect 0.

Two implementations of HD95, both equal to MedPy:

* :func:`hd95` (plain): MedPy's algorithm (erosion, then a Euclidean distance transform) restricted to the
  bounding box of both masks plus a one-voxel margin. Erosion only looks at face neighbours, which lie in the
  margin or outside the array where erosion sees background anyway; every surface voxel the transform measures
  to lies in the box. So cropping changes no number. It is slow when a stray voxel far away stretches the box.
* :func:`case_metrics` (fast): voxel counts by ``bincount``; the surfaces of all classes in one pass over the
  label map; nearest surface voxels by a k-d tree, with the distance then computed with the transform's own
  arithmetic. Its cost follows the number of surface voxels, not the volume.

Surface metrics of the corrected protocol (:func:`surface_metrics`, and ``"surface"`` of
:func:`case_metrics_all`), from the same surface voxels and the same two sets of directed distances as HD95:

* NSD, normalized surface Dice at a tolerance tau: the share of the surface voxels of both masks lying within
  tau of the other mask's surface, ``(|d_pg <= tau| + |d_gp <= tau|) / (|S_p| + |S_g|)``. Surfaces are
  MedPy's (connectivity-1 erosion, background beyond the array), which is also how MONAI's
  ``compute_surface_dice`` finds them (``binary_erosion ^ mask`` after a zero-padded crop), without its
  sub-voxel option.
* ASSD, MedPy's ``assd`` (0.5): the mean of the pooled distances of both directions,
  ``(sum(d_pg) + sum(d_gp)) / (|S_p| + |S_g|)``, the usual definition. (MedPy before 0.5 took the mean of
  the two directed means, which weights the smaller surface more.)

Edge rules as for the corrected HD95: organ absent from the truth -> (NaN, NaN); missed organ (truth present,
prediction empty) -> NSD 0 (no surface voxel of the truth is near a predicted one; MONAI gives 0 too) and
ASSD NaN (no distance exists; MedPy raises).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

Protocol = Literal["reference", "corrected"]
PROTOCOLS: tuple[str, ...] = ("reference", "corrected")
#: NSD tolerance (mm) when none is given: the 1 mm of the FLARE 2021 abdominal-organ challenge ("NSD-1mm").
#: FLARE 2022-23 switched to organ-specific 2-7 mm from inter-rater variation; pass those per class
#: (``tolerance_mm=[...]``) to match them. In voxels when the data have no spacing.
DEFAULT_NSD_TOLERANCE_MM = 1.0
#: columns of :func:`surface_metrics`
SURFACE_METRICS: tuple[str, ...] = ("nsd", "assd")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """MedPy ``dc``: 2|A∩B| / (|A| + |B|) of two binary masks; 1.0 when both are empty (MedPy's choice)."""
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    inter = np.count_nonzero(pred & gt)
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    return 2.0 * inter / float(total) if total else 1.0


def _sampling(spacing: Sequence[float] | float | None, ndim: int) -> np.ndarray | None:
    if spacing is None:
        return None
    s = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if s.size == 1:
        s = np.repeat(s, ndim)
    if s.size != ndim:
        raise ValueError(f"spacing {tuple(s.tolist())} has {s.size} values for a {ndim}-D mask")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing {tuple(s.tolist())} must be positive and finite")
    return np.ascontiguousarray(s)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None) -> float:
    """MedPy ``hd95`` of two non-empty binary masks: the 95th percentile of the pooled surface distances of
    both directions, in the units of ``spacing`` (voxels when None). Plain path, in the bounding box."""
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if not pred.any() or not gt.any():
        raise ValueError("hd95 needs two non-empty masks (MedPy raises too)")
    sampling = _sampling(spacing, pred.ndim)
    boxes = ndimage.find_objects(pred.view(np.uint8)) + ndimage.find_objects(gt.view(np.uint8))
    lo = [max(0, min(b[d].start for b in boxes) - 1) for d in range(pred.ndim)]
    hi = [min(pred.shape[d], max(b[d].stop for b in boxes) + 1) for d in range(pred.ndim)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    pred, gt = pred[box], gt[box]
    struct = ndimage.generate_binary_structure(pred.ndim, 1)
    pred_border = pred ^ ndimage.binary_erosion(pred, structure=struct, iterations=1)
    gt_border = gt ^ ndimage.binary_erosion(gt, structure=struct, iterations=1)
    # The transform measures the distance to the nearest zero, hence the inverted borders (as in MedPy).
    d_pred_to_gt = ndimage.distance_transform_edt(~gt_border, sampling=sampling)[pred_border]
    d_gt_to_pred = ndimage.distance_transform_edt(~pred_border, sampling=sampling)[gt_border]
    return float(np.percentile(np.hstack((d_pred_to_gt, d_gt_to_pred)), 95))


def _as_labels(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr.view(np.uint8)
    if arr.dtype.kind not in "iu":
        # The reference compares float label volumes with ``== i``: only integral values carry a class.
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} holds non-integer values; expected a label map")
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds negative labels; expected 0 (background) .. num_classes-1")
    return arr


def _check_labels(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_labels(pred, "prediction")
    gt = _as_labels(gt, "ground truth")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if pred.ndim == 0:
        raise ValueError("label maps must have at least one dimension")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background + one class), got {num_classes}")
    return pred, gt


def _counts(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels per class in the prediction, the ground truth and both. Labels >= num_classes are ignored,
    as the reference only looks at classes 1..num_classes-1."""
    # One joint histogram (truth, prediction) instead of a pass per class; labels >= num_classes share one
    # extra bin. The smallest key type keeps bincount's input small; slabs bound its intp copy.
    k = num_classes + 1
    key_type = np.uint8 if k * k <= 256 else np.uint16 if k * k <= 65536 else np.int64
    joint = np.zeros(k * k, np.int64)
    step = max(1, (1 << 24) // max(1, pred[0].size))
    for s in range(0, pred.shape[0], step):
        p = np.minimum(pred[s : s + step], num_classes).astype(key_type, copy=False)
        g = np.minimum(gt[s : s + step], num_classes).astype(key_type, copy=False)
        joint += np.bincount((g * key_type(k) + p).ravel(), minlength=k * k)
    joint = joint.reshape(k, k)[:num_classes, :num_classes]
    return joint.sum(axis=0), joint.sum(axis=1), np.diagonal(joint).copy()


def _surface_points(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Surface voxels of every class 1..num_classes-1 in one pass: item c-1 is an (N, ndim) index array.

    MedPy's surface is ``mask ^ binary_erosion(mask, connectivity 1)`` with background beyond the array: the
    mask voxels with a face neighbour outside the mask, or on the array border. In a label map those are the
    voxels whose label differs from a face neighbour's, or that touch the border.
    """
    fg = (labels > 0) & (labels < num_classes)
    # Work in the box of all foreground plus one voxel: the face neighbours of every foreground voxel lie in
    # it (or beyond the array, where the border rule applies), so the surfaces are the same.
    lo, hi = [], []
    for axis in range(labels.ndim):
        hit = np.flatnonzero(np.any(fg, axis=tuple(a for a in range(labels.ndim) if a != axis)))
        if hit.size == 0:
            return [np.zeros((0, labels.ndim), np.intp) for _ in range(1, num_classes)]
        lo.append(max(0, int(hit[0]) - 1))
        hi.append(min(labels.shape[axis], int(hit[-1]) + 2))
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    labels, fg = labels[box], fg[box]
    border = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        lab = np.moveaxis(labels, axis, 0)
        out = np.moveaxis(border, axis, 0)  # a view: writes land in ``border``
        differs = lab[1:] != lab[:-1]
        out[1:] |= differs
        out[:-1] |= differs
        # The array border counts as background. Where the box stops short of the array border its edge
        # holds no foreground, so marking it is harmless.
        out[0] = True
        out[-1] = True
    border &= fg
    coords = np.nonzero(border)
    lab_at = labels[coords]
    order = np.argsort(lab_at, kind="stable")
    points = np.stack(coords, axis=1)[order] + np.asarray(lo, dtype=np.intp)
    bounds = np.searchsorted(lab_at[order], np.arange(1, num_classes + 1))
    return [points[bounds[c - 1] : bounds[c]] for c in range(1, num_classes)]


def _nearest_distances(src: np.ndarray, dst: np.ndarray, sampling: np.ndarray | None) -> np.ndarray:
    """Distance from each point of ``src`` to the nearest point of ``dst`` (index arrays, scaled by
    ``sampling``), computed as ``distance_transform_edt`` does: per-axis offsets scaled, squared, summed in
    axis order, square root. In voxel units every step is exact, so the values are MedPy's bit for bit; in
    millimetres two equally near surface voxels can differ in the last bit of the sum."""
    scale = np.ones(src.shape[1]) if sampling is None else sampling
    tree = cKDTree(dst * scale, balanced_tree=False, compact_nodes=False)
    _, nearest = tree.query(src * scale, k=1)
    offset = (dst[nearest] - src).astype(np.float64)
    if sampling is not None:
        offset *= sampling
    offset *= offset
    total = offset[:, 0].copy()
    for axis in range(1, offset.shape[1]):
        total += offset[:, axis]
    return np.sqrt(total)


def presence(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes - 1, 2) bool: for classes 1.., whether the prediction and the ground truth contain it."""
    pred, gt = _check_labels(pred, gt, num_classes)
    n_pred, n_gt, _ = _counts(pred, gt, num_classes)
    return np.stack([n_pred[1:] > 0, n_gt[1:] > 0], axis=1)


def _directed_distances(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, classes: list[int], samplings: list[np.ndarray | None]
) -> list[dict[int, tuple[np.ndarray, np.ndarray]]]:
    """(prediction -> truth, truth -> prediction) surface distances of ``classes`` (present in both maps) for
    each sampling. The surfaces are extracted once; a repeated voxel-unit sampling reuses the first."""
    out: list[dict[int, tuple[np.ndarray, np.ndarray]]] = [{} for _ in samplings]
    if not classes:
        return out
    pred_surf = _surface_points(pred, num_classes)
    gt_surf = _surface_points(gt, num_classes)
    for c in classes:
        for k, sampling in enumerate(samplings):
            if k and sampling is None and samplings[0] is None:
                out[k][c] = out[0][c]
                continue
            out[k][c] = (
                _nearest_distances(pred_surf[c - 1], gt_surf[c - 1], sampling),
                _nearest_distances(gt_surf[c - 1], pred_surf[c - 1], sampling),
            )
    return out


def _hd95_of(distances: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[int, float]:
    return {c: float(np.percentile(np.hstack(d), 95)) for c, d in distances.items()}


def nsd_tolerances(tolerance_mm: float | Sequence[float] | None, num_classes: int) -> np.ndarray:
    """One NSD tolerance per foreground class from a scalar, a per-class sequence or None (the default)."""
    tol = DEFAULT_NSD_TOLERANCE_MM if tolerance_mm is None else tolerance_mm
    arr = np.atleast_1d(np.asarray(tol, dtype=np.float64))
    if arr.ndim != 1 or arr.size not in (1, num_classes - 1):
        raise ValueError(
            f"tolerance_mm has {arr.size} values; give one, or one per foreground class ({num_classes - 1})"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"tolerance_mm {arr.tolist()} must be finite and >= 0")
    return np.broadcast_to(arr, (num_classes - 1,)).copy()


def _fill_surface(
    n_pred: np.ndarray,
    n_gt: np.ndarray,
    distances: dict[int, tuple[np.ndarray, np.ndarray]],
    tolerances: np.ndarray,
) -> np.ndarray:
    """(NSD, ASSD) per foreground class under the corrected protocol's edge rules (module docstring)."""
    num_classes = n_pred.shape[0]
    out = np.full((num_classes - 1, 2), np.nan)
    for c in range(1, num_classes):
        if not n_gt[c]:
            continue  # absent from the truth: not scored
        if not n_pred[c]:
            out[c - 1, 0] = 0.0  # missed: no truth surface is within any tolerance; ASSD undefined
            continue
        d_pg, d_gp = distances[c]
        tau = tolerances[c - 1]
        within = np.count_nonzero(d_pg <= tau) + np.count_nonzero(d_gp <= tau)
        out[c - 1] = within / float(d_pg.size + d_gp.size), np.concatenate(distances[c]).mean()
    return out


def surface_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | float | None,
    tolerance_mm: float | Sequence[float] | None = None,
) -> np.ndarray:
    """NSD and ASSD of classes 1..num_classes-1 of one case, shape (num_classes - 1, 2), corrected protocol.

    Distances in the units of ``spacing`` (z, y, x; voxels when None), and so is ``tolerance_mm``: one value
    for all classes or one per foreground class; None is :data:`DEFAULT_NSD_TOLERANCE_MM`. NaN where the
    corrected protocol scores nothing: organ absent from the truth (both columns), missed organ (ASSD; its NSD
    is 0). The module docstring has the definitions.
    """
    pred, gt = _check_labels(pred, gt, num_classes)
    sampling = _sampling(spacing, pred.ndim)
    tolerances = nsd_tolerances(tolerance_mm, num_classes)
    n_pred, n_gt, _ = _counts(pred, gt, num_classes)
    both = [c for c in range(1, num_classes) if n_pred[c] and n_gt[c]]
    (dist,) = _directed_distances(pred, gt, num_classes, both, [sampling])
    return _fill_surface(n_pred, n_gt, dist, tolerances)


def _fill(
    protocol: str, n_pred: np.ndarray, n_gt: np.ndarray, n_both: np.ndarray, hd: dict[int, float]
) -> np.ndarray:
    num_classes = n_pred.shape[0]
    out = np.zeros((num_classes - 1, 2), dtype=np.float64)
    for c in range(1, num_classes):
        if n_pred[c] and n_gt[c]:
            out[c - 1] = 2.0 * n_both[c] / float(n_pred[c] + n_gt[c]), hd[c]
        elif protocol == "reference":
            out[c - 1] = (1.0, 0.0) if n_pred[c] else (0.0, 0.0)
        else:
            out[c - 1] = (0.0, np.nan) if n_gt[c] else (np.nan, np.nan)
    return out


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    protocol: Protocol = "reference",
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Dice and HD95 of classes 1..num_classes-1 of one case, as an array of shape (num_classes - 1, 2).

    ``pred`` and ``gt`` are label maps of equal shape (a case is 3-D (D, H, W); any rank works).
    ``protocol="reference"``: voxel units, ``spacing`` ignored, the reference edge rules.
    ``protocol="corrected"``: HD95 in the units of ``spacing`` (z, y, x) (voxels when None), NaN for organs
    absent from the ground truth and for the HD95 of missed organs. The module docstring has the exact rules.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown metric protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    pred, gt = _check_labels(pred, gt, num_classes)
    sampling = _sampling(spacing, pred.ndim) if protocol == "corrected" else None
    n_pred, n_gt, n_both = _counts(pred, gt, num_classes)
    both = [c for c in range(1, num_classes) if n_pred[c] and n_gt[c]]
    (dist,) = _directed_distances(pred, gt, num_classes, both, [sampling])
    return _fill(protocol, n_pred, n_gt, n_both, _hd95_of(dist))


def case_metrics_all(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float | Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """Both protocols, the corrected protocol's surface metrics and the presence flags of one case in one go
    (counts, surfaces and distances shared): ``{"reference": (C-1, 2), "corrected": (C-1, 2), "surface":
    (C-1, 2) NSD and ASSD as :func:`surface_metrics`, "presence": (C-1, 2) bool}``."""
    pred, gt = _check_labels(pred, gt, num_classes)
    sampling = _sampling(spacing, pred.ndim)
    tolerances = nsd_tolerances(tolerance_mm, num_classes)
    n_pred, n_gt, n_both = _counts(pred, gt, num_classes)
    both = [c for c in range(1, num_classes) if n_pred[c] and n_gt[c]]
    d_ref, d_corr = _directed_distances(pred, gt, num_classes, both, [None, sampling])
    return {
        "reference": _fill("reference", n_pred, n_gt, n_both, _hd95_of(d_ref)),
        "corrected": _fill("corrected", n_pred, n_gt, n_both, _hd95_of(d_corr)),
        "surface": _fill_surface(n_pred, n_gt, d_corr, tolerances),
        "presence": np.stack([n_pred[1:] > 0, n_gt[1:] > 0], axis=1),
    }
