"""How reports, tables and the console write numbers, and how every figure is saved: one place, one rule.

The rule for a missing number: ``None`` or NaN is written :data:`MISSING` (an en dash) in text and drawn as
NaN (no bar, no point) in figures. Everything else is formatted with an explicit format spec, so the same
value reads the same in ``comparison.md``, ``report.md``, the console tables and ``organseg info``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Literal

from organseg.fileio import atomic_write_bytes

MISSING = "–"


def is_missing(v: Any) -> bool:
    """None or NaN: a value that was not measured (an absent organ, a record an older organseg lacked)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def num(v: float | int | None, spec: str = ".2f", *, scale: float = 1.0) -> str:
    """``format(v * scale, spec)``, or :data:`MISSING`; ``num(0.8123, scale=100)`` is ``"81.23"``."""
    if is_missing(v):
        return MISSING
    return format(v if scale == 1.0 else v * scale, spec)


def pm(stat: dict[str, Any], scale: float = 1.0) -> str:
    """``mean ± std`` of a ``{"mean", "std"}`` record (2 decimals; no ``± std`` for a single value)."""
    if is_missing(stat["mean"]):
        return MISSING
    text = f"{stat['mean'] * scale:.2f}"
    return text + ("" if is_missing(stat["std"]) else f" ± {stat['std'] * scale:.2f}")


def signed_pct(v: float | None) -> str:
    """A relative change as a signed percentage: ``-0.14`` -> ``"-14.0%"``."""
    return MISSING if is_missing(v) else f"{100 * v:+.1f}%"


def duration(seconds: float | None, style: Literal["short", "clock", "minutes"] = "short") -> str:
    """A span of time, the one way organseg writes them; :data:`MISSING` when it is unknown (None, NaN,
    infinite or negative).

    ``"short"`` (tables and the verdict of ``comparison.md``): ``12.3 s`` below a minute, else ``m:ss`` or
    ``h:mm:ss`` (whole seconds, rounded). ``"clock"`` (progress lines, whose elapsed time and ETA tick):
    always ``h:mm:ss``. ``"minutes"`` (prose about runs that take minutes): ``4.3 min``, or ``45.0 s`` below
    a minute.
    """
    if is_missing(seconds) or not math.isfinite(seconds) or seconds < 0:
        return MISSING
    if style == "minutes":
        return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
    if style == "short" and seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    if style == "clock":
        return f"{h}:{m:02d}:{s:02d}"
    if style != "short":
        raise ValueError(f"duration style {style!r}: expected 'short', 'clock' or 'minutes'")
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def json_number(v: float | int | None) -> float | None:
    """A number for a JSON file: JSON has no NaN or infinity, so an undefined value is written as null."""
    return None if v is None or not math.isfinite(float(v)) else float(v)


def slice_caption(display_index: int, count: int, file_index: int | None = None) -> str:
    """How every picture names a slice (viewer, report overlays, ``predict --overlay``): its number in display
    order counted from 1 (slice 1 the most superior, :mod:`~organseg.imageio.orientation`) out of ``count``,
    then its 0-based index along the file's slice axis, when known: ``slice 4 / 6 (file slice 2)``."""
    text = f"slice {display_index + 1} / {count}"
    return text if file_index is None else f"{text} (file slice {file_index})"


def fmt_value(v: Any) -> str:
    """A configuration value as text (swept values in labels, tables and CSV cells): floats in ``g`` form,
    lists and dicts as JSON, anything else as ``str`` (a setting left ``None`` reads ``None``: that is its
    value, not a missing measurement)."""
    if isinstance(v, float):
        return f"{v:g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def first_names(names: list[str], n: int = 4) -> str:
    """The first ``n`` of a list of names for an error message: ``[a, b, ... 7 more]``."""
    if not names:
        return "[]"
    return "[" + ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "") + "]"


def shape_text(t: Any) -> str:
    """A tensor's shape as a list, the way the weight-loading messages write it: ``[96, 3, 4, 4]``."""
    return str(list(t.shape))


def plot_value(v: float | None, scale: float = 1.0) -> float:
    """A value for a figure: NaN where it is missing (matplotlib leaves a gap)."""
    return math.nan if is_missing(v) else v * scale


# ------------------------------------------------------------------------------------------------- figures


def pyplot():
    """matplotlib's pyplot on the Agg backend: files only, never a window (nor a display needed)."""
    import matplotlib  # noqa: PLC0415 (about a second to import: only the verbs that draw pay it)

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # noqa: PLC0415 (after matplotlib.use, and as heavy)

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically (a reader never sees half an image) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
