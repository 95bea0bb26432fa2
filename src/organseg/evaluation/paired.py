"""Paired statistics of two networks tested on the same cases: is B better than A, and by how much?

For each metric protocol, metric (DSC, HD95) and organ, and for the per-case mean over organs:

``a``, ``b``
    The mean over the paired cases of each network's per-case value; with several seeds (training runs) per
    network, a case's value is the mean over that network's seeds.
``diff``
    ``b - a``, in the order the networks are given (positive: B has the higher DSC / the larger HD95).
``ci_low``, ``ci_high``
    95 % percentile bootstrap interval of ``diff``: every resample draws the cases with replacement and, when
    a network has several seeds, also its seeds with replacement (independently per network, as seed 1 of
    one network has nothing to do with seed 1 of the other), so the interval holds both the case-to-case and
    the run-to-run variation. Seeded (``seed``), :data:`DEFAULT_RESAMPLES` resamples by default.
``p``, ``p_holm``
    Two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, its defaults: zero differences dropped,
    exact distribution for small samples) of the per-case differences of the seed means, then Holm's
    step-down correction over the organs of one (protocol, metric). The mean over organs is one test of its
    own and is not part of the family (``p_holm == p``). When every difference is 0 there is nothing to
    test: ``p = 1``.
``wins``, ``losses``
    Cases where B is better (higher DSC, lower HD95) / worse than A; equal cases count in neither.

Which cases pair: those where both networks have a value (the corrected protocol leaves an organ absent from
the truth unscored, and the HD95 of a missed organ). For the per-case mean, a case's organs are those that
every run of both networks has a value for, so the two means always average the same organs.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from organseg.errors import DataError

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
ALPHA = 0.05
METRICS = ("dice", "hd95")
#: DSC: larger is better; HD95: smaller is better (the sign of a "win")
HIGHER_IS_BETTER = {"dice": True, "hd95": False}
_CHUNK = 2000  # resamples per vectorised block: bounds the (resamples, seeds, cases) gather


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted in the family):
    the i-th smallest of m becomes ``max_{j<=i} min(1, (m - j + 1) p_(j))``."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted)
    return out


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; 1.0 when all are zero (SciPy raises or
    warns there: no non-zero difference is no evidence of a difference), NaN without any pair."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    if not np.any(d):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the normal approximation's small-sample warning
        return float(stats.wilcoxon(d).pvalue)


def _seed_mean(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the finite values; NaN where none (no warning)."""
    ok = np.isfinite(x)
    n = ok.sum(axis=0)
    total = np.where(ok, x, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def bootstrap_diff(
    a: np.ndarray, b: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Bootstrap distribution of ``mean(b) - mean(a)`` for (seeds, cases) arrays of the same cases: cases
    resampled with replacement, and each network's seeds too when it has several. Resamples without any
    case where both have a value are dropped (possible for HD95 when seeds miss an organ)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = a.shape[1]
    if n == 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, resamples, _CHUNK):
        r = min(_CHUNK, resamples - start)
        cases = rng.integers(0, n, (r, n))
        sa = rng.integers(0, a.shape[0], (r, a.shape[0]))
        sb = rng.integers(0, b.shape[0], (r, b.shape[0]))
        ma = _seed_mean(np.moveaxis(a[sa[:, :, None], cases[:, None, :]], 1, 0))  # (r, n)
        mb = _seed_mean(np.moveaxis(b[sb[:, :, None], cases[:, None, :]], 1, 0))
        d = mb - ma
        ok = np.isfinite(d)
        k = ok.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(k > 0, np.where(ok, d, 0.0).sum(axis=1) / np.maximum(k, 1), np.nan))
    dist = np.concatenate(out)
    return dist[np.isfinite(dist)]


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    *,
    higher_is_better: bool = True,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Difference B - A of one metric over paired cases. ``a``: (seeds_a, cases), ``b``: (seeds_b, cases)
    (a 1-D array is one seed), NaN where a run has no value. Returns ``a``, ``b``, ``diff``, ``ci_low``,
    ``ci_high``, ``p``, ``wins``, ``losses``, ``n`` (paired cases); None for what cannot be computed."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a.shape[1]} and {b.shape[1]} cases: pairing needs the same cases on both sides")
    ma, mb = _seed_mean(a), _seed_mean(b)
    keep = np.isfinite(ma) & np.isfinite(mb)
    n = int(keep.sum())
    if n == 0:
        none = dict.fromkeys(("a", "b", "diff", "ci_low", "ci_high", "p"))
        return {**none, "wins": 0, "losses": 0, "n": 0}
    d = mb[keep] - ma[keep]
    dist = bootstrap_diff(a[:, keep], b[:, keep], resamples=resamples, seed=seed)
    better = d > 0 if higher_is_better else d < 0
    worse = d < 0 if higher_is_better else d > 0
    lo, hi = (np.percentile(dist, [2.5, 97.5]) if dist.size else (math.nan, math.nan))
    return {
        "a": float(ma[keep].mean()),
        "b": float(mb[keep].mean()),
        "diff": float(mb[keep].mean() - ma[keep].mean()),
        "ci_low": _finite(lo),
        "ci_high": _finite(hi),
        "p": _finite(wilcoxon_p(d)),
        "wins": int(better.sum()),
        "losses": int(worse.sum()),
        "n": n,
    }


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def paired_table(
    a: np.ndarray,
    b: np.ndarray,
    organs: Sequence[str],
    metric: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[dict[str, Any]]:
    """One record per organ and one for ``"mean"`` (the per-case mean over organs) of one metric, with
    Holm's correction over the organs. ``a``: (seeds_a, cases, organs), ``b``: (seeds_b, cases, organs)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    hib = HIGHER_IS_BETTER[metric]
    records = []
    for k, organ in enumerate(organs):
        rec = paired_difference(a[:, :, k], b[:, :, k], higher_is_better=hib, resamples=resamples, seed=seed)
        records.append({"organ": organ, **rec})
    adjusted = holm([math.nan if r["p"] is None else r["p"] for r in records])
    for r, q in zip(records, adjusted, strict=True):
        r["p_holm"] = _finite(q)
    # The mean over organs: per case, the organs every run of both networks has a value for.
    common = np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0)  # (cases, organs)
    counted = common.sum(axis=1)

    def case_mean(x: np.ndarray) -> np.ndarray:
        total = np.where(common, x, 0.0).sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counted > 0, total / np.maximum(counted, 1), np.nan)

    mean = paired_difference(case_mean(a), case_mean(b), higher_is_better=hib, resamples=resamples, seed=seed)
    records.append({"organ": "mean", **mean, "p_holm": mean["p"]})
    for r in records:
        r["significant"] = r["p_holm"] is not None and r["p_holm"] < ALPHA
    return records


# --------------------------------------------------------------------------------- from run folders


def read_per_case(results_dir: str | Path) -> list[dict[str, Any]]:
    """``per_case.json`` of a results folder (written by ``organseg test``)."""
    path = Path(results_dir) / "per_case.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the per-case results ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(c, dict) and "classes" in c for c in data):
        raise DataError(f"{path}: not an organseg per-case file (a list of cases with classes)")
    return data


def per_case_array(
    per_case: list[dict[str, Any]],
    case_ids: Sequence[str],
    class_names: Sequence[str],
    protocol: str,
    metric: str,
) -> np.ndarray:
    """(cases, organs) values of one run in the given case and class order; NaN where not scored."""
    by_case = {str(c["case"]): c for c in per_case}
    out = np.full((len(case_ids), len(class_names)), np.nan)
    for i, case in enumerate(case_ids):
        classes = by_case[case]["classes"]
        for k, name in enumerate(class_names):
            v = ((classes.get(name) or {}).get(protocol) or {}).get(metric)
            if v is not None:
                out[i, k] = float(v)
    return out


def paired_from_runs(
    runs_a: Sequence[str | Path],
    runs_b: Sequence[str | Path],
    class_names: Sequence[str],
    columns: Sequence[tuple[str, int]],
    protocols: Sequence[str] = ("reference", "corrected"),
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Paired records of network B's runs against network A's (results folders, one per seed), for every
    protocol and metric; organs named by their table column (``columns``: (title, class index)). Returns the
    records and the cases they pair over (those every run was tested on)."""
    per_a = [read_per_case(d) for d in runs_a]
    per_b = [read_per_case(d) for d in runs_b]
    ids = [str(c["case"]) for c in per_a[0]]
    shared = set.intersection(*({str(c["case"]) for c in p} for p in per_a + per_b))
    case_ids = [c for c in ids if c in shared]
    names = [class_names[i] for _, i in columns]
    titles = [t for t, _ in columns]
    records = []
    for protocol in protocols:
        for metric in METRICS:
            a = np.stack([per_case_array(p, case_ids, names, protocol, metric) for p in per_a])
            b = np.stack([per_case_array(p, case_ids, names, protocol, metric) for p in per_b])
            for rec in paired_table(a, b, titles, metric, resamples=resamples, seed=seed):
                records.append({"protocol": protocol, "metric": metric, **rec})
    return records, case_ids
