"""The ranking of a study's networks and how stable it is, as challengeR reports challenge rankings
(Wiesenfarth et al., "Methods and open-source toolkit for analyzing and visualizing challenge results",
Sci Rep 11, 2369, 2021): rank on the full data, then rank again on bootstrap resamples of the subjects and
count how often each network takes each rank.

**What ranks.** For one protocol and one set of swept values, each network's **mean DSC over the subjects**:
a volume's value is its mean DSC over the organs that every run of every ranked network has a value for (so
all networks average the same organs, as the paired mean row does for two), a subject's value the mean over
its volumes, then over the network's seeds; the subjects ranked over are those where every network has a
value. The higher mean ranks first. **Ties** (exactly equal means) share the better rank and the next rank is
skipped (``1, 1, 3``: challengeR's ``ties.method = "min"``).

**Stability.** ``resamples`` times (default :data:`DEFAULT_RESAMPLES`, seeded: ``seed``), draw the subjects
with replacement (the same draw for every network: the subjects stay paired) and rank the networks' means
on the draw. Only the subjects are resampled: a subject's value is already the mean over the seeds. Reported
per network: how often it took each rank (``rank_counts[k]``: rank ``k + 1``; ``rank_frequency``: their
fractions), its mean bootstrap rank; and Kendall's tau-b between each bootstrap ranking and the full-data
ranking (1: the same order; undefined, and not counted, when either ranking is all ties), summarised by
median, mean and quartiles. A network that ranks first in nearly every resample is ahead whatever subjects
were drawn; two networks that share ranks 1 and 2 are not told apart by these subjects.

Whether a difference is *significant* is the paired tests' question (:mod:`organseg.study.paired`); the
verdict (:mod:`organseg.study.verdict`) writes both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from organseg.errors import DataError
from organseg.formatting import json_number
from organseg.results import CaseRecord
from organseg.study.comparison import GroupRecord, KendallSummary, RankEntry, RankingRecord
from organseg.study.paired import by_subject, case_subjects, per_case_array, read_per_case

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
TIES = "min"
_CHUNK_ELEMENTS = 20_000_000  # bounds the (resamples, networks, subjects) gather of one block


def min_ranks(means: np.ndarray) -> np.ndarray:
    """Ranks of the last axis, the highest value first, ties sharing the better rank (``1, 1, 3``):
    ``1 + the number of strictly higher values``. NaN values rank last (after every number)."""
    m = np.where(np.isfinite(means), means, -np.inf)
    return 1 + (m[..., None, :] > m[..., :, None]).sum(axis=-1)


def kendall_tau_b(ranks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between each row of ``ranks`` (..., n) and the ranking ``reference`` (n,); NaN where
    either ranking has every pair tied (tau is undefined there)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    i, j = np.triu_indices(ranks.shape[-1], k=1)
    ref = np.sign(reference[i] - reference[j]).astype(np.float64)
    other = np.sign(ranks[..., i] - ranks[..., j])
    numerator = (other * ref).sum(axis=-1)
    pairs_ref = np.count_nonzero(ref)
    pairs_other = np.count_nonzero(other, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            (pairs_ref > 0) & (pairs_other > 0), numerator / np.sqrt(pairs_ref * pairs_other), np.nan
        )


def rank_networks(
    values: np.ndarray,
    models: Sequence[str],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[list[RankEntry], KendallSummary]:
    """The ranking of (networks, subjects) per-subject values (higher is better; subjects with a NaN for any
    network are left out) and its bootstrap stability (module docstring): one :class:`RankEntry` per
    network, in ``models`` order, and the Kendall's tau summary."""
    x = np.asarray(values, dtype=np.float64)
    x = x[:, np.isfinite(x).all(axis=0)]
    k, n = x.shape
    means = x.mean(axis=1) if n else np.full(k, np.nan)
    full = min_ranks(means)
    counts = np.zeros((k, k), dtype=np.int64)  # (network, rank - 1)
    taus = []
    if n:
        rng = np.random.default_rng(seed)
        chunk = max(1, min(resamples, _CHUNK_ELEMENTS // (k * n)))
        for start in range(0, resamples, chunk):
            r = min(chunk, resamples - start)
            draw = rng.integers(0, n, (r, n))
            boot = x[:, draw].mean(axis=2).T  # (r, networks)
            ranks = min_ranks(boot)
            for net in range(k):
                counts[net] += np.bincount(ranks[:, net] - 1, minlength=k)
            taus.append(kendall_tau_b(ranks, full))
    tau = np.concatenate(taus) if taus else np.zeros(0)
    tau = tau[np.isfinite(tau)]
    done = int(counts[0].sum()) if k else 0
    entries: list[RankEntry] = []
    for net, model in enumerate(models):
        freq = counts[net] / done if done else np.zeros(k)
        entries.append(
            {
                "model": model,
                "mean": json_number(means[net]),
                "rank": int(full[net]),
                "rank_counts": [int(v) for v in counts[net]],
                "rank_frequency": [float(v) for v in freq],
                "mean_rank": json_number(float((np.arange(1, k + 1) * freq).sum())) if done else None,
            }
        )
    summary: KendallSummary = {
        "median": json_number(np.median(tau)) if tau.size else None,
        "mean": json_number(tau.mean()) if tau.size else None,
        "q25": json_number(np.percentile(tau, 25)) if tau.size else None,
        "q75": json_number(np.percentile(tau, 75)) if tau.size else None,
        "n": int(tau.size),
    }
    return entries, summary


def subject_means(
    per_runs: Sequence[Sequence[Sequence[CaseRecord]]],
    organs: Sequence[str],
    protocol: str,
) -> tuple[np.ndarray, list[str], int, str]:
    """Per-subject mean DSC (the module docstring's rule) of each network from its runs' per-case records
    (``per_runs[network][seed]``): (networks, subjects) values, the subjects, the volumes they hold, and the
    unit of analysis (``"volume"`` when the results predate subjects: each volume its own subject)."""
    flat = [p for runs in per_runs for p in runs]
    shared = set.intersection(*({str(c["case"]) for c in p} for p in flat))
    case_ids = [str(c["case"]) for c in flat[0] if str(c["case"]) in shared]
    subjects = case_subjects(flat, case_ids)
    unit = "subject" if subjects is not None else "volume"
    labels = subjects if subjects is not None else case_ids
    arrays = [
        np.stack([per_case_array(p, case_ids, organs, protocol, "dice") for p in runs]) for runs in per_runs
    ]
    common = np.all([np.isfinite(a).all(axis=0) for a in arrays], axis=0)  # (volumes, organs)
    counted = common.sum(axis=1)
    rows, names = [], list(dict.fromkeys(labels))
    for a in arrays:
        total = np.where(common, a, 0.0).sum(axis=2)  # (seeds, volumes)
        with np.errstate(invalid="ignore", divide="ignore"):
            volume_mean = np.where(counted > 0, total / np.maximum(counted, 1), np.nan)
        means, names, _ = by_subject(volume_mean, labels)
        ok = np.isfinite(means)
        with np.errstate(invalid="ignore", divide="ignore"):
            rows.append(
                np.where(ok.any(axis=0), np.where(ok, means, 0.0).sum(0) / np.maximum(ok.sum(0), 1), np.nan)
            )
    x = np.stack(rows) if rows else np.zeros((0, len(names)))
    keep = np.isfinite(x).all(axis=0)
    kept = {s for s, k in zip(names, keep, strict=True) if k}
    volumes = sum(1 for s, c in zip(labels, counted, strict=True) if s in kept and c > 0)
    return x, names, volumes, unit


def study_ranking(
    groups: Sequence[GroupRecord],
    results_dirs: dict[str, str | Path | list[CaseRecord]],
    class_names: Sequence[str],
    columns: Sequence[tuple[str, int]],
    protocols: Sequence[str] = ("reference", "corrected"),
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[list[RankingRecord], list[str]]:
    """One :class:`RankingRecord` per (swept values, protocol) where at least two networks were tested
    (``comparison.json``'s ``"ranking"``), from the groups and each run's results folder (or per-case
    records), and notes for what could not be ranked."""
    names = [class_names[i] for _, i in columns]
    cache: dict[str, list[CaseRecord]] = {}

    def per_case(run: str) -> list[CaseRecord]:
        if run not in cache:
            d = results_dirs[run]
            cache[run] = d if isinstance(d, list) else read_per_case(d)
        return cache[run]

    out: list[RankingRecord] = []
    notes: list[str] = []
    for combo in dict.fromkeys(json.dumps(g["sweep"], sort_keys=True, default=str) for g in groups):
        at = [g for g in groups if json.dumps(g["sweep"], sort_keys=True, default=str) == combo]
        if len(at) < 2:
            continue
        models = [g["model"] for g in at]
        try:
            per_runs = [[per_case(r) for r in g["runs"]] for g in at]
            blocks = [(p, *subject_means(per_runs, names, p)) for p in protocols]
        except DataError as exc:
            notes.append(f"No ranking of {', '.join(g['label'] for g in at)}: {exc}")
            continue
        for protocol, x, _, volumes, unit in blocks:
            entries, tau = rank_networks(x, models, resamples=resamples, seed=seed)
            n = int(np.isfinite(x).all(axis=0).sum()) if x.size else 0
            out.append(
                {
                    "protocol": protocol,
                    "metric": "dice",
                    "sweep": dict(at[0]["sweep"]),
                    "statistic": "mean over the subjects of the mean DSC over the organs every run has",
                    "ties": TIES,
                    "n_subjects": n,
                    "n_volumes": volumes,
                    "unit_of_analysis": unit,
                    "resamples": resamples,
                    "seed": seed,
                    "networks": entries,
                    "kendall_tau": tau,
                }
            )
    return out, notes


def rank_order(rec: RankingRecord) -> list[RankEntry]:
    """The networks of a ranking, best first (ties in the order of the networks)."""
    return sorted(rec["networks"], key=lambda e: e["rank"])
