"""Paired statistics of two networks tested on the same subjects: is B better than A, and by how much?

The unit of analysis is the **subject** (the patient): ACDC's ED and ES frames of one patient, or several
scans of one patient in an nnU-Net dataset mapped with ``data.subjects``, are one subject, never two
independent cases. A subject's value is the mean over its volumes (and over a network's seeds). For each
metric protocol, metric (DSC, HD95) and organ, and for the per-volume mean over organs:

``a``, ``b``
    The mean over the paired subjects of each network's per-subject value; with several seeds (training runs)
    per network, a subject's value is the mean over that network's seeds of the mean over its volumes.
``diff``
    ``b - a``, in the order the networks are given (positive: B has the higher DSC / the larger HD95).
``ci_low``, ``ci_high``
    95 % percentile bootstrap interval of ``diff``: every resample draws the subjects with replacement (a
    drawn subject brings all its volumes) and, when a network has several seeds, also its seeds with
    replacement (independently per network, as seed 1 of one network has nothing to do with seed 1 of the
    other), so the interval holds both the subject-to-subject and the run-to-run variation. Seeded (``seed``),
    :data:`DEFAULT_RESAMPLES` resamples by default.
``p``, ``p_holm``
    Two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, its defaults: zero differences dropped,
    exact distribution for small samples) of the per-subject differences, then Holm's step-down correction
    over one **family** (:func:`adjust_families`): for one protocol, one metric and one set of swept values,
    every organ of every comparison made there (``organs x comparisons`` p-values: with networks A, B, C
    compared with the baseline A, the organs of B - A and of C - A; with ``pairs="all"`` also C - B). The
    mean over organs is not in that family: the mean rows of the comparisons form a family of their own
    (one p per comparison), so with two networks ``p_holm == p`` for the mean row and the organ rows are
    corrected over the organs only, as before. ``comparisons`` and ``family_size`` say which family a record
    was adjusted in. When every difference is 0 there is nothing to test: ``p = 1``. With n subjects the
    exact test cannot go below ``2 / 2^n`` (1.95e-3 for 10 patients).
``wins``, ``losses``
    Subjects where B is better (higher DSC, lower HD95) / worse than A; equal subjects count in neither.
``n``, ``n_subjects``, ``n_volumes``, ``unit_of_analysis``
    Paired subjects (``n == n_subjects``), the volumes they hold, and ``"subject"`` (``"volume"`` for
    results written before organseg recorded subjects: each volume is then its own unit, and a note says so).

Which networks are compared (:func:`comparison_pairs`): each network with the **baseline** (``"unet"`` when
present, else the first network; ``baseline=`` chooses), B - A with A the baseline; with ``pairs="all"``
every pair, the baseline's first, then the others in the order of the networks (A the earlier one).

Which subjects pair: those where both networks have a value in at least one volume (the corrected protocol
leaves an organ absent from the truth unscored, and the HD95 of a missed organ). For the per-volume mean, a
volume's organs are those that every run of both networks has a value for, so the two means always average
the same organs.

Counting a patient's volumes as independent cases is wrong: in a simulation with no true difference and two
correlated frames per patient it rejected the null far more often than the nominal 5 % and its intervals
covered the truth too rarely; ``tests/test_paired_calibration.py`` checks both methods.

:mod:`organseg.study.verdict` writes these records as the paired tables and the verdict of ``comparison.md``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np

from organseg.errors import DataError
from organseg.formatting import json_number
from organseg.results import CaseRecord
from organseg.run import ResultsDir
from organseg.study.comparison import GroupRecord, PairedRecord, PairedSettings

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
ALPHA = 0.05
METRICS = ("dice", "hd95")
#: DSC: larger is better; HD95: smaller is better (the sign of a "win")
HIGHER_IS_BETTER = {"dice": True, "hd95": False}
_CHUNK = 2000  # resamples per vectorised block: bounds the (resamples, seeds, cases) gather


class PairedDifference(TypedDict):
    """:func:`paired_difference`: B - A of one metric over the paired subjects (the module docstring defines
    each field); None for what cannot be computed (no paired subject)."""

    a: float | None
    b: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p: float | None
    wins: int
    losses: int
    n: int
    n_subjects: int
    n_volumes: int
    unit_of_analysis: str


class OrganDifference(PairedDifference):
    """:func:`paired_table`: one organ (or ``"mean"``) with its Holm-adjusted p and verdict, written as
    ``organ``, the :class:`PairedDifference` fields, ``p_holm``, ``significant``."""

    organ: str
    p_holm: float | None
    significant: bool


class ProtocolDifference(OrganDifference):
    """:func:`paired_from_runs`: an :class:`OrganDifference` under one protocol and metric (written first)."""

    protocol: str
    metric: str


class MeanCI(TypedDict):
    """:func:`mean_ci`: one network's mean DSC over organs with its 95 % bootstrap interval."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    cases: int


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
    from scipy import stats  # noqa: PLC0415 (scipy.stats costs the command line's start-up most of a second)

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


def bootstrap_mean(
    x: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> tuple[float | None, np.ndarray]:
    """One network's mean over organs of the per-organ mean over cases (the reports' mean DSC) and its
    bootstrap distribution, for a (seeds, cases, organs) array with NaN where a case is not scored: the
    one-sample counterpart of :func:`bootstrap_diff` (cases resampled with replacement, and the seeds too when
    there are several), for the confidence band of a curve. An organ without any value in a resample is
    left out of that resample's mean, as the test summaries leave it out."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    s, n, k = x.shape

    def statistic(v: np.ndarray) -> np.ndarray:  # (..., seeds, cases, organs) -> (...)
        organ = _seed_mean(np.moveaxis(_seed_mean(np.moveaxis(v, -3, 0)), -2, 0))  # (..., organs)
        return _seed_mean(np.moveaxis(organ, -1, 0))

    point = float(statistic(x)) if n else math.nan
    if n == 0 or not math.isfinite(point):
        return None, np.zeros(0)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(_CHUNK, 20_000_000 // (s * n * k)))  # bounds the (chunk, seeds, cases, organs) gather
    out = []
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        cases = rng.integers(0, n, (r, n))
        seeds = rng.integers(0, s, (r, s))
        out.append(statistic(x[seeds[:, :, None], cases[:, None, :]]))  # (r, seeds, cases, organs) -> (r,)
    dist = np.concatenate(out)
    return point, dist[np.isfinite(dist)]


def mean_ci(x: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> MeanCI:
    """``mean``, ``ci_low``, ``ci_high`` (95 % percentile bootstrap, :func:`bootstrap_mean`) and ``cases`` of
    a (seeds, cases, organs) array; None for what cannot be computed."""
    x = np.asarray(x, dtype=np.float64)
    point, dist = bootstrap_mean(x, resamples=resamples, seed=seed)
    lo, hi = np.percentile(dist, [2.5, 97.5]) if dist.size else (math.nan, math.nan)
    return {"mean": point, "ci_low": json_number(lo), "ci_high": json_number(hi), "cases": int(x.shape[1])}


def by_subject(x: np.ndarray, subjects: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(seeds, volumes) values -> (seeds, subjects): each subject's mean over its volumes with a value (NaN
    where none), the subjects in order of first appearance, and each subject's number of volumes whose
    value is defined for every seed."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if len(subjects) != x.shape[1]:
        raise ValueError(f"{len(subjects)} subject labels for {x.shape[1]} volumes")
    names = list(dict.fromkeys(str(s) for s in subjects))
    column = {s: i for i, s in enumerate(names)}
    member = np.zeros((x.shape[1], len(names)))
    member[np.arange(x.shape[1]), [column[str(s)] for s in subjects]] = 1.0
    ok = np.isfinite(x)
    count = ok.astype(np.float64) @ member  # (seeds, subjects)
    total = np.where(ok, x, 0.0) @ member
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    volumes = (ok.all(axis=0).astype(np.float64) @ member).astype(int)
    return means, names, volumes


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    *,
    subjects: Sequence[str] | None = None,
    higher_is_better: bool = True,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> PairedDifference:
    """Difference B - A of one metric over paired subjects. ``a``: (seeds_a, volumes), ``b``: (seeds_b,
    volumes) (a 1-D array is one seed), NaN where a run has no value; ``subjects``: the subject of each
    volume (None: every volume is its own subject, ``unit_of_analysis`` "volume"). Every statistic is
    computed on the subjects' means over their volumes (module docstring). Returns ``a``, ``b``, ``diff``,
    ``ci_low``, ``ci_high``, ``p``, ``wins``, ``losses``, ``n`` (paired subjects), ``n_subjects``,
    ``n_volumes``, ``unit_of_analysis``; None for what cannot be computed."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a.shape[1]} and {b.shape[1]} volumes: pairing needs the same ones on both sides")
    unit = "volume" if subjects is None else "subject"
    labels = [str(i) for i in range(a.shape[1])] if subjects is None else list(subjects)
    both = np.concatenate([a, b])
    means, _, _ = by_subject(both, labels)
    a, b = means[: a.shape[0]], means[a.shape[0] :]
    ma, mb = _seed_mean(a), _seed_mean(b)
    keep = np.isfinite(ma) & np.isfinite(mb)
    n = int(keep.sum())
    kept = {s for s, k in zip(dict.fromkeys(labels), keep, strict=True) if k}
    volume_ok = np.isfinite(_seed_mean(both[: a.shape[0]])) & np.isfinite(_seed_mean(both[a.shape[0] :]))
    n_volumes = int(sum(1 for s, ok in zip(labels, volume_ok, strict=True) if ok and s in kept))
    counts = {"n": n, "n_subjects": n, "n_volumes": n_volumes, "unit_of_analysis": unit}
    if n == 0:
        none = dict.fromkeys(("a", "b", "diff", "ci_low", "ci_high", "p"))
        return {**none, "wins": 0, "losses": 0, **counts}
    d = mb[keep] - ma[keep]
    dist = bootstrap_diff(a[:, keep], b[:, keep], resamples=resamples, seed=seed)
    better = d > 0 if higher_is_better else d < 0
    worse = d < 0 if higher_is_better else d > 0
    lo, hi = np.percentile(dist, [2.5, 97.5]) if dist.size else (math.nan, math.nan)
    return {
        "a": float(ma[keep].mean()),
        "b": float(mb[keep].mean()),
        "diff": float(mb[keep].mean() - ma[keep].mean()),
        "ci_low": json_number(lo),
        "ci_high": json_number(hi),
        "p": json_number(wilcoxon_p(d)),
        "wins": int(better.sum()),
        "losses": int(worse.sum()),
        **counts,
    }


def paired_table(
    a: np.ndarray,
    b: np.ndarray,
    organs: Sequence[str],
    metric: str,
    *,
    subjects: Sequence[str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[OrganDifference]:
    """One record per organ and one for ``"mean"`` (the per-volume mean over organs) of one metric, with
    Holm's correction over the organs. ``a``: (seeds_a, volumes, organs), ``b``: (seeds_b, volumes, organs);
    ``subjects``: each volume's subject (:func:`paired_difference`)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    hib = HIGHER_IS_BETTER[metric]
    opts = {"subjects": subjects, "higher_is_better": hib, "resamples": resamples, "seed": seed}
    records: list[OrganDifference] = []
    for k, organ in enumerate(organs):
        rec = paired_difference(a[:, :, k], b[:, :, k], **opts)
        records.append({"organ": organ, **rec})
    adjusted = holm([math.nan if r["p"] is None else r["p"] for r in records])
    for r, q in zip(records, adjusted, strict=True):
        r["p_holm"] = json_number(q)
    # The mean over organs: per case, the organs every run of both networks has a value for.
    common = np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0)  # (cases, organs)
    counted = common.sum(axis=1)

    def case_mean(x: np.ndarray) -> np.ndarray:
        total = np.where(common, x, 0.0).sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counted > 0, total / np.maximum(counted, 1), np.nan)

    mean = paired_difference(case_mean(a), case_mean(b), **opts)
    records.append({"organ": "mean", **mean, "p_holm": mean["p"]})
    for r in records:
        r["significant"] = r["p_holm"] is not None and r["p_holm"] < ALPHA
    return records


# --------------------------------------------------------------------------------- from run folders


def read_per_case(results_dir: str | Path) -> list[CaseRecord]:
    """``per_case.json`` of a results folder (written by ``organseg test``)."""
    path = ResultsDir(results_dir).file(ResultsDir.PER_CASE_JSON)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the per-case results ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(c, dict) and "classes" in c for c in data):
        raise DataError(f"{path}: not an organseg per-case file (a list of cases with classes)")
    return data


def per_case_array(
    per_case: Sequence[CaseRecord],
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


def case_subjects(per_case_runs: Sequence[Sequence[CaseRecord]], case_ids: Sequence[str]) -> list[str] | None:
    """The subject of each case as the runs' ``per_case.json`` record it; None when a run predates subjects
    (each volume is then its own unit). Runs that disagree on a case's subject were tested on different
    datasets: a DataError."""
    seen: dict[str, str] = {}
    for per_case in per_case_runs:
        for c in per_case:
            if "subject" not in c:
                return None
            case, subject = str(c["case"]), str(c["subject"])
            if seen.setdefault(case, subject) != subject:
                raise DataError(
                    f"case {case} belongs to subject {seen[case]!r} in one run and {subject!r} in another: "
                    "the runs were tested with different data.subjects"
                )
    return [seen[c] for c in case_ids]


def paired_from_runs(
    runs_a: Sequence[str | Path | list[CaseRecord]],
    runs_b: Sequence[str | Path | list[CaseRecord]],
    class_names: Sequence[str],
    columns: Sequence[tuple[str, int]],
    protocols: Sequence[str] = ("reference", "corrected"),
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[list[ProtocolDifference], list[str], list[str] | None]:
    """Paired records of network B's runs against network A's (one per seed: a results folder, or its
    per-case records, e.g. a cross-validation's pooled folds), for every protocol and metric; organs named
    by their table column (``columns``: (title, class index)). Returns the records, the cases they pair over
    (those every run was tested on) and the cases' subjects (None: unknown, each case its own)."""
    per_a = [d if isinstance(d, list) else read_per_case(d) for d in runs_a]
    per_b = [d if isinstance(d, list) else read_per_case(d) for d in runs_b]
    ids = [str(c["case"]) for c in per_a[0]]
    shared = set.intersection(*({str(c["case"]) for c in p} for p in per_a + per_b))
    case_ids = [c for c in ids if c in shared]
    subjects = case_subjects(per_a + per_b, case_ids)
    names = [class_names[i] for _, i in columns]
    titles = [t for t, _ in columns]
    records: list[ProtocolDifference] = []
    for protocol in protocols:
        for metric in METRICS:
            a = np.stack([per_case_array(p, case_ids, names, protocol, metric) for p in per_a])
            b = np.stack([per_case_array(p, case_ids, names, protocol, metric) for p in per_b])
            recs = paired_table(a, b, titles, metric, subjects=subjects, resamples=resamples, seed=seed)
            records += [{"protocol": protocol, "metric": metric, **rec} for rec in recs]
    return records, case_ids, subjects


# ------------------------------------------------------------------------------------------------ studies


PAIRS = ("baseline", "all")


def comparison_pairs(models: Sequence[str], baseline: str, pairs: str = "baseline") -> list[tuple[str, str]]:
    """The (A, B) comparisons of a study's networks (B - A): every network against ``baseline``, in the
    networks' order; with ``pairs="all"`` then every other pair, A the earlier network in ``models``."""
    if pairs not in PAIRS:
        raise ValueError(f"pairs={pairs!r}: one of {', '.join(PAIRS)}")
    out = [(baseline, m) for m in models if m != baseline]
    if pairs == "all":
        others = [m for m in models if m != baseline]
        out += [(a, b) for i, a in enumerate(others) for b in others[i + 1 :]]
    return out


def _family_key(r: PairedRecord) -> tuple[str, str, str, bool]:
    sweep = json.dumps(r.get("sweep") or {}, sort_keys=True, default=str)
    return sweep, r["protocol"], r["metric"], r["organ"] == "mean"


def adjust_families(records: list[PairedRecord]) -> None:
    """Holm's correction over each family, in place (``p_holm``, ``significant``, ``comparisons``,
    ``family_size``). A family is every organ record of every comparison with the same swept values,
    protocol and metric; the mean rows of those comparisons are a family of their own. ``family_size`` is
    the number of p-values adjusted together (records without a p are not counted), ``comparisons`` the
    number of comparisons in the family. With one comparison this is :func:`paired_table`'s correction over
    the organs, and the mean row keeps its p."""
    families: dict[tuple[str, str, str, bool], list[PairedRecord]] = {}
    for r in records:
        families.setdefault(_family_key(r), []).append(r)
    for family in families.values():
        adjusted = holm([math.nan if r["p"] is None else r["p"] for r in family])
        size = sum(1 for r in family if r["p"] is not None)
        comparisons = len({(r["model_a"], r["model_b"]) for r in family})
        for r, q in zip(family, adjusted, strict=True):
            r["p_holm"] = json_number(q)
            r["significant"] = r["p_holm"] is not None and r["p_holm"] < ALPHA
            r["comparisons"] = comparisons
            r["family_size"] = size


def study_paired(
    groups: Sequence[GroupRecord],
    results_dirs: dict[str, str | Path | list[CaseRecord]],
    class_names: Sequence[str],
    columns: Sequence[tuple[str, int]],
    *,
    baseline: str | None = None,
    pairs: str = "baseline",
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[list[PairedRecord], PairedSettings, list[str]]:
    """Paired records of every comparison (:func:`comparison_pairs`: each network against ``baseline``,
    default the first network; ``pairs="all"``: every pair) at the same swept values, from a study's
    groups (``model``, ``sweep``, ``runs``: run names, ``n``: seeds) and each run's results folder (or its
    per-case records: a cross-validation's pooled folds), Holm-adjusted per family (:func:`adjust_families`).
    Returns the records (``comparison.json``'s ``"paired"``), the settings and notes for what could not be
    paired (results written before organseg wrote ``per_case.json``)."""
    models = list(dict.fromkeys(g["model"] for g in groups))
    baseline = models[0] if baseline is None and models else baseline
    settings: PairedSettings = {
        "resamples": resamples,
        "seed": seed,
        "alpha": ALPHA,
        "ci": "95 % percentile bootstrap",
        "test": "Wilcoxon signed-rank (scipy.stats.wilcoxon), two-sided",
        "correction": "Holm over the organs x the comparisons of each protocol, metric and swept values; "
        "the mean rows: over the comparisons",
        "difference": "model_b minus model_a (model_a: the baseline; with pairs 'all', the earlier network)",
        "baseline": baseline or "",
        "pairs": pairs,
    }
    out: list[PairedRecord] = []
    notes: list[str] = []
    if len(models) < 2:
        return out, settings, notes
    for combo in dict.fromkeys(json.dumps(g["sweep"], sort_keys=True, default=str) for g in groups):
        at = {g["model"]: g for g in groups if json.dumps(g["sweep"], sort_keys=True, default=str) == combo}
        for model_a, model_b in comparison_pairs([m for m in models if m in at], baseline, pairs):
            if model_a not in at:
                continue
            out += _pair_records(
                at[model_a],
                at[model_b],
                results_dirs,
                class_names,
                columns,
                settings,
                notes,
                resamples=resamples,
                seed=seed,
            )
    adjust_families(out)
    return out, settings, notes


def _pair_records(
    base: GroupRecord,
    g: GroupRecord,
    results_dirs: dict[str, str | Path | list[CaseRecord]],
    class_names: Sequence[str],
    columns: Sequence[tuple[str, int]],
    settings: PairedSettings,
    notes: list[str],
    *,
    resamples: int,
    seed: int,
) -> list[PairedRecord]:
    """The paired records of group ``g`` (B) against group ``base`` (A); notes what cannot be paired."""
    try:
        recs, case_ids, subjects = paired_from_runs(
            [results_dirs[n] for n in base["runs"]],
            [results_dirs[n] for n in g["runs"]],
            class_names,
            columns,
            resamples=resamples,
            seed=seed,
        )
    except DataError as exc:
        notes.append(f"No paired statistics for {g['label']} against {base['label']}: {exc}")
        return []
    settings["cases"] = len(case_ids)
    settings["subjects"] = len(set(subjects)) if subjects is not None else len(case_ids)
    settings["unit_of_analysis"] = "subject" if subjects is not None else "volume"
    if subjects is None:
        notes.append(
            f"The results of {g['label']} or {base['label']} were written before organseg recorded each "
            "volume's subject: every volume counts as its own subject here. Test the runs again to pool "
            "a patient's volumes."
        )
    units = "subjects" if subjects is not None else "volumes"
    resampled = f"{units} and seeds" if max(base["n"], g["n"]) > 1 else units
    out: list[PairedRecord] = []
    for r in recs:
        unit = "fraction" if r["metric"] == "dice" else g[r["protocol"]]["hd95_unit"]
        out.append(
            {
                "protocol": r["protocol"],
                "metric": r["metric"],
                "organ": r["organ"],
                "model_a": base["model"],
                "model_b": g["model"],
                "sweep": dict(g["sweep"]),
                "seeds_a": base["n"],
                "seeds_b": g["n"],
                "resampled": resampled,
                "unit": unit,
                **{k: v for k, v in r.items() if k not in ("protocol", "metric", "organ")},
            }
        )
    return out
