"""Intensity preprocessing: raw scanner values -> float32 in [0, 1], described as plain data.

Each dataset records the spec that produced its [0, 1] images (``SegmentationDataset.preprocessing``); the
spec travels in checkpoints so that ``predict`` maps a new raw scan exactly like the training data. Kinds:

``{"kind": "ct_window", "window": [-125, 275]}``
    The Synapse rule (TransUNet README, SAMed script): clip HU to the window, then (x - lo) / (hi - lo).
``{"kind": "percentile", "lower": a, "upper": b, "percentiles": [0.5, 99.5]}``
    nnU-Net-style CT clipping: a and b are the stored 0.5th / 99.5th percentiles of the training foreground
    (computed once with :func:`foreground_percentiles`), then scaled to [0, 1] like a window.
``{"kind": "zscore_minmax", "clip": [-3, 3]}``
    For MRI and other non-quantitative modalities: per-image z-score, clipped to ``clip`` standard deviations
    and mapped linearly to [0, 1].
``{"kind": "minmax"}`` (optionally ``"percentiles": [1, 99]``)
    Per-image min-max, the rule that produced the SSL4MIS ACDC h5 files; it is the spec for raw ACDC NIfTI.
``{"kind": "none"}``
    The input is already in [0, 1]; values outside it are an error rather than silently clipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from organseg.errors import ConfigError, DataError

SYNAPSE_WINDOW: tuple[float, float] = (-125.0, 275.0)
KINDS = ("ct_window", "percentile", "zscore_minmax", "minmax", "none")


def ct_window_spec(window: Sequence[float] = SYNAPSE_WINDOW) -> dict:
    lo, hi = (float(v) for v in window)
    return validate_spec({"kind": "ct_window", "window": [lo, hi]})


def validate_spec(spec: dict) -> dict:
    """Check a spec's kind and keys; returns it unchanged. ConfigError names the problem."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ConfigError(f"preprocessing spec must be a dict with a 'kind' (one of {KINDS}), got {spec!r}")
    kind = spec["kind"]
    if kind not in KINDS:
        raise ConfigError(f"unknown preprocessing kind {kind!r}; expected one of {KINDS}")

    def _pair(key: str) -> tuple[float, float]:
        value = spec.get(key)
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"preprocessing {kind!r} needs {key!r} as two numbers, got {value!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ConfigError(
                f"preprocessing {kind!r}: {key!r} must be finite with low < high, got {value!r}"
            )
        return lo, hi

    if kind == "ct_window":
        _pair("window")
    elif kind == "percentile":
        if "lower" not in spec or "upper" not in spec:
            raise ConfigError(
                "preprocessing 'percentile' needs the stored 'lower' and 'upper' intensity values"
            )
        validate_spec({"kind": "ct_window", "window": [spec["lower"], spec["upper"]]})
    elif kind == "zscore_minmax":
        if "clip" in spec:
            _pair("clip")
    elif kind == "minmax" and "percentiles" in spec:
        lo, hi = _pair("percentiles")
        if lo < 0 or hi > 100:
            raise ConfigError(
                f"preprocessing 'minmax': percentiles must lie in [0, 100], got {spec['percentiles']}"
            )
    return spec


def _window(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    # float32 arithmetic in the SAMed order (clip, subtract, divide) so prepared data match the reference
    # bits.
    np.clip(x, lo, hi, out=x)
    x -= np.float32(lo)
    x /= np.float32(hi - lo)
    return x


#: Kinds that read raw values as Hounsfield units: made for CT. The per-image kinds (zscore_minmax, minmax)
#: are what MRI and other non-quantitative scans get.
CT_KINDS = ("ct_window", "percentile")
#: DICOM Modality (0008,0060) values that say nothing of the intensities: no warning either way.
_UNSAID_MODALITIES = ("", "OT")


def describe_spec(spec: dict) -> str:
    """A few words for messages: ``the CT window [-125, 275] HU``, ``per-image zscore_minmax``."""
    kind = spec.get("kind")
    if kind == "ct_window":
        lo, hi = (float(v) for v in spec["window"])
        return f"the CT window [{lo:g}, {hi:g}] HU"
    if kind == "percentile":
        return f"the CT clip [{float(spec['lower']):g}, {float(spec['upper']):g}] HU"
    if kind in ("zscore_minmax", "minmax"):
        return f"per-image {kind} normalisation"
    return f"preprocessing {kind}"


def modality_mismatch(spec: dict, modality: str, source: str) -> str | None:
    """A warning when a scan's DICOM Modality and the checkpoint's preprocessing disagree: an MR (or PET,
    ultrasound ...) series through a CT window, or a CT series through a per-image normalisation made for
    MRI; None when they agree or either says nothing (no Modality, ``OT``, preprocessing ``none``)."""
    modality = (modality or "").strip().upper()
    kind = spec.get("kind")
    if modality in _UNSAID_MODALITIES or kind not in (*CT_KINDS, "zscore_minmax", "minmax"):
        return None
    if kind in CT_KINDS and modality != "CT":
        return (
            f"{source}: DICOM Modality {modality}, but the checkpoint maps intensities with "
            f"{describe_spec(spec)}, made for CT: check that this network is meant for {modality} scans"
        )
    if kind not in CT_KINDS and modality == "CT":
        return (
            f"{source}: DICOM Modality CT, but the checkpoint maps intensities with "
            f"{describe_spec(spec)}, as for MRI, not a CT window: check that this network was trained on CT"
        )
    return None


def apply_preprocessing(image: np.ndarray, spec: dict, *, source: str | None = None) -> np.ndarray:
    """Map raw intensities to float32 in [0, 1] following ``spec`` (see module docstring).

    ``source`` (a file name) is used in error messages. NaN/inf voxels raise DataError.
    """
    validate_spec(spec)
    where = f"{source}: " if source else ""
    x = np.array(image, dtype=np.float32, copy=True)
    if x.size and not np.isfinite(x).all():
        raise DataError(f"{where}image has {int((~np.isfinite(x)).sum())} NaN/inf voxels")
    kind = spec["kind"]
    if kind == "ct_window":
        lo, hi = (float(v) for v in spec["window"])
        return _window(x, lo, hi)
    if kind == "percentile":
        return _window(x, float(spec["lower"]), float(spec["upper"]))
    if kind == "zscore_minmax":
        lo, hi = (float(v) for v in spec.get("clip", (-3.0, 3.0)))
        mean, std = float(x.mean()) if x.size else 0.0, float(x.std()) if x.size else 0.0
        if std <= 1e-8:
            return np.zeros_like(x)
        x -= np.float32(mean)
        x /= np.float32(std)
        return _window(x, lo, hi)
    if kind == "minmax":
        if not x.size:
            return x
        p_lo, p_hi = (float(v) for v in spec.get("percentiles", (0.0, 100.0)))
        if (p_lo, p_hi) == (0.0, 100.0):
            lo, hi = float(x.min()), float(x.max())
        else:
            lo, hi = (float(v) for v in np.percentile(x, [p_lo, p_hi]))
        if hi - lo <= 1e-12:
            return np.zeros_like(x)
        return _window(x, lo, hi)
    # "none": the caller promises [0, 1]; a raw scan given by mistake must not be clipped into nonsense.
    if x.size:
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise DataError(
                f"{where}intensities span [{lo:g}, {hi:g}] but preprocessing 'none' expects input already in "
                "[0, 1]; give the spec that maps this scan's raw values (e.g. a CT window)"
            )
    return np.clip(x, 0.0, 1.0, out=x)


def foreground_percentiles(
    cases: Iterable[tuple[np.ndarray, np.ndarray]],
    percentiles: Sequence[float] = (0.5, 99.5),
    *,
    samples_per_case: int = 10000,
    seed: int = 1234,
) -> tuple[float, float]:
    """nnU-Net-style intensity bounds: percentiles of foreground (label > 0) voxels over the training cases.

    Like nnU-Net, at most ``samples_per_case`` foreground voxels are drawn per case (seeded) so that large
    organs in one case do not dominate and memory stays small.
    """
    rng = np.random.default_rng(seed)
    pool: list[np.ndarray] = []
    for image, label in cases:
        fg = np.asarray(image)[np.asarray(label) > 0]
        if fg.size > samples_per_case:
            fg = rng.choice(fg, samples_per_case, replace=False)
        pool.append(fg.astype(np.float64))
    values = np.concatenate(pool) if pool else np.zeros(0)
    if values.size == 0:
        raise DataError("no foreground voxels in the training labels: cannot compute percentile bounds")
    if not np.isfinite(values).all():
        raise DataError("NaN/inf voxels inside the training foreground: cannot compute percentile bounds")
    lo, hi = (float(v) for v in np.percentile(values, list(percentiles)))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def percentile_spec(lower: float, upper: float, percentiles: Sequence[float] = (0.5, 99.5)) -> dict:
    return validate_spec(
        {
            "kind": "percentile",
            "lower": float(lower),
            "upper": float(upper),
            "percentiles": [float(p) for p in percentiles],
        }
    )
