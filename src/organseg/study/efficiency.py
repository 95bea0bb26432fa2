"""Data efficiency of a study: how DSC grows with the training data, the images seen and the wall time.

Two figures beside ``comparison.md`` (linked from its Figures section), both read from the run folders only:

``comparison_fraction.png``
    Drawn when the study sweeps ``data.train_fraction`` (``organseg compare --set
    data.train_fraction=0.1,0.25,0.5,1``): the mean DSC over organs of each network (one line per network and
    value of any other swept key) against the fraction, in both metric protocols, with its 95 % bootstrap
    interval as a band. The point is the number of the comparison tables (the mean over organs of the
    per-organ mean over the test cases, averaged over seeds); the band comes from
    :func:`organseg.study.paired.mean_ci` on the runs' ``per_case.json`` (cases, and seeds when there
    are several, resampled; seeded), so it holds the case-to-case and the run-to-run variation.
``comparison_learning.png``
    Drawn when any run has validation records: each run's validation mean DSC (the ``"val"`` records of its
    ``metrics.jsonl``, reference protocol on the validation cases) against the images it had seen and
    against its training wall time. Images seen are counted as ``train.budget_images`` counts them:
    iterations x the global batch (an epoch's short last batch counts whole). The wall time of a validation
    is the training clock of the training record at the same iteration (``"time"``: seconds since the run
    began, earlier validations and resumed sessions included), or the run's ``train_seconds`` at its last
    iteration.

The numbers behind both figures go to ``comparison.json`` under ``"efficiency"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from organseg.errors import DataError
from organseg.formatting import fmt_value, pyplot, save_figure
from organseg.metrics import PROTOCOLS
from organseg.run import RunDir
from organseg.study.comparison import (
    Comparison,
    EfficiencySettings,
    FractionPoint,
    LearningCurve,
    LearningPoint,
)
from organseg.study.grid import evaluated_on
from organseg.study.paired import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    mean_ci,
    per_case_array,
    read_per_case,
)

FRACTION_KEY = "data.train_fraction"
FRACTION_FIGURE = "comparison_fraction.png"
LEARNING_FIGURE = "comparison_learning.png"


# ------------------------------------------------------------------------------------------------ numbers


def _line_label(model: str, sweep: dict[str, Any], skip: str | None) -> str:
    """``unet`` or ``unet, base_lr=0.01``: the network and the swept values other than ``skip``."""
    return model + "".join(f", {k.rsplit('.', 1)[-1]}={fmt_value(v)}" for k, v in sweep.items() if k != skip)


def fraction_curves(
    c: Comparison, *, resamples: int | None = None, seed: int | None = None
) -> list[FractionPoint]:
    """One record per (group, protocol) of a study that swept ``data.train_fraction``: ``model``, ``line``
    (the figure's legend entry), ``fraction``, ``protocol``, ``seeds``, ``mean``, ``ci_low``, ``ci_high``
    (DSC as a fraction) and ``cases``. Empty when the fraction is not swept. A group whose runs lack
    ``per_case.json`` (results of an older organseg) gets its mean from the tables and no interval."""
    if FRACTION_KEY not in c.get("sweep_keys", []):
        return []
    resamples = DEFAULT_RESAMPLES if resamples is None else resamples
    seed = DEFAULT_SEED if seed is None else seed
    runs = {r["name"]: r for r in c["runs"]}
    organs = list(c["dataset"]["class_names"][1:])
    out = []
    for g in c["groups"]:
        fraction = g["sweep"].get(FRACTION_KEY)
        if fraction is None:
            fraction = 1.0  # the key unset in a run: all of the training data
        try:
            per_case = [read_per_case(runs[n]["results_dir"]) for n in g["runs"]]
        except DataError:
            per_case = []
        shared = set.intersection(*({str(x["case"]) for x in p} for p in per_case)) if per_case else set()
        case_ids = [str(x["case"]) for x in per_case[0] if str(x["case"]) in shared] if per_case else []
        for protocol in PROTOCOLS:
            rec: FractionPoint = {
                "model": g["model"],
                "line": _line_label(g["model"], g["sweep"], FRACTION_KEY),
                "sweep": dict(g["sweep"]),
                "fraction": float(fraction),
                "protocol": protocol,
                "seeds": g["n"],
            }
            if case_ids:
                x = np.stack([per_case_array(p, case_ids, organs, protocol, "dice") for p in per_case])
                rec.update(mean_ci(x, resamples=resamples, seed=seed))
            else:
                rec.update(mean=g[protocol]["mean_dice"]["mean"], ci_low=None, ci_high=None, cases=0)
            out.append(rec)
    return out


def _batch_size(run: RunDir) -> int | None:
    try:
        value = (run.config.get("train") or {}).get("batch_size")
    except DataError:
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def learning_curve(run_dir: str | Path) -> list[LearningPoint]:
    """The validation points of one run folder: ``iter``, ``images`` (iterations x ``train.batch_size``),
    ``seconds`` (training wall clock at that iteration) and ``dice`` (validation mean DSC, a fraction); None
    where a record does not tell."""
    run = RunDir(run_dir)
    try:
        records = run.metrics()  # the one reader: a cut last line is skipped
    except DataError:  # no log, or a damaged one: no points for this run, the figure goes on
        records = []
    times = {
        int(r["iter"]): float(r["time"])
        for r in records
        if r.get("kind") == "train" and "iter" in r and r.get("time") is not None
    }
    summary = run.summary()
    if summary is not None and summary.iterations is not None and summary.train_seconds is not None:
        times.setdefault(int(summary.iterations), float(summary.train_seconds))
    batch = _batch_size(run)
    points: list[LearningPoint] = []
    for r in records:
        if r.get("kind") != "val" or r.get("mean_dice") is None or "iter" not in r:
            continue
        it = int(r["iter"])
        points.append(
            {
                "iter": it,
                "images": it * batch if batch else None,
                "seconds": times.get(it),
                "dice": float(r["mean_dice"]),
            }
        )
    return points


def learning_curves(c: Comparison) -> list[LearningCurve]:
    """Per run of the study: ``name``, ``model``, ``seed``, ``sweep``, ``line`` and its ``points``
    (:func:`learning_curve`)."""
    out = []
    for r in c["runs"]:
        out.append(
            {
                "name": r["name"],
                "model": r["model"],
                "seed": r["seed"],
                "sweep": dict(r.get("sweep") or {}),
                "line": _line_label(r["model"], r.get("sweep") or {}, None),
                "points": learning_curve(r["run_dir"]),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------ figures


def _colors(lines: Sequence[tuple[str, str]], models: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """(model, line) -> colour: one tab10 colour per network, its lines from the full colour towards white
    (as the comparison's other figures colour a network's swept variants)."""
    from matplotlib import colormaps  # noqa: PLC0415 (matplotlib: not on the command line's start-up)

    out: dict[str, tuple[float, ...]] = {}
    for model in dict.fromkeys(m for m, _ in lines):
        own = list(dict.fromkeys(name for m, name in lines if m == model))
        index = list(models).index(model) if model in models else len(out)
        base = np.array(colormaps["tab10"](index % 10)[:3])
        for k, name in enumerate(own):
            out[name] = tuple(base + (1.0 - base) * 0.6 * k / max(len(own) - 1, 1))
    return out


def _plot_fractions(
    path: Path, c: Comparison, curves: list[FractionPoint], settings: EfficiencySettings
) -> str:
    plt = pyplot()
    colors = _colors([(r["model"], r["line"]) for r in curves], c["models"])
    fractions = sorted({r["fraction"] for r in curves})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        for line in dict.fromkeys(r["line"] for r in curves):
            pts = sorted(
                (r for r in curves if r["line"] == line and r["protocol"] == protocol),
                key=lambda r: r["fraction"],
            )
            xs = [r["fraction"] for r in pts]
            ys = [np.nan if r["mean"] is None else 100 * r["mean"] for r in pts]
            lo = [np.nan if r["ci_low"] is None else 100 * r["ci_low"] for r in pts]
            hi = [np.nan if r["ci_high"] is None else 100 * r["ci_high"] for r in pts]
            seeds = sorted({r["seeds"] for r in pts})
            label = f"{line} (n={'/'.join(str(s) for s in seeds)} seed{'s' if seeds != [1] else ''})"
            ax.plot(xs, ys, "o-", color=colors[line], label=label, linewidth=1.4, markersize=4)
            ax.fill_between(xs, lo, hi, color=colors[line], alpha=0.2, linewidth=0)
        if min(fractions) > 0 and max(fractions) / min(fractions) >= 4:
            ax.set_xscale("log")
        ax.set_xticks(fractions, [fmt_value(f) for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("training fraction (data.train_fraction, whole cases)")
        ax.set_title(f"{protocol} protocol", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean DSC over organs (%)")
    axes[0].legend(fontsize=7)
    synth = " — SYNTHETIC DATA" if c["dataset"].get("synthetic") else ""
    fig.suptitle(
        f"DSC against training data, {evaluated_on(c)}; band: 95 % bootstrap interval "
        f"({settings['resamples']:,} resamples of cases and seeds, seed {settings['seed']}){synth}",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)
    return path.name


def _time_axis(seconds: float) -> tuple[float, str]:
    """(divisor, unit) that keeps the wall-time axis readable."""
    if seconds >= 2 * 3600:
        return 3600.0, "h"
    if seconds >= 120:
        return 60.0, "min"
    return 1.0, "s"


def _plot_learning(path: Path, c: Comparison, curves: list[LearningCurve]) -> str:
    plt = pyplot()
    colors = _colors([(r["model"], r["line"]) for r in curves], c["models"])
    longest = max((p["seconds"] or 0.0 for r in curves for p in r["points"]), default=0.0)
    div, unit = _time_axis(longest)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    labelled: set[str] = set()
    for r in curves:
        if not r["points"]:
            continue
        ys = [100 * p["dice"] for p in r["points"]]
        label = None if r["line"] in labelled else r["line"]  # one legend entry per line, its seeds alike
        labelled.add(r["line"])
        for ax, key, scale in ((axes[0], "images", 1.0), (axes[1], "seconds", 1.0 / div)):
            xs = [np.nan if p[key] is None else p[key] * scale for p in r["points"]]
            ax.plot(
                xs,
                ys,
                ".-",
                color=colors[r["line"]],
                label=label if ax is axes[0] else None,
                linewidth=1.0,
                markersize=4,
                alpha=0.85,
            )
    axes[0].set_xlabel("images seen (iterations x train.batch_size)")
    axes[1].set_xlabel(f"training wall time ({unit})")
    axes[0].set_ylabel("validation mean DSC (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    synth = " — SYNTHETIC DATA" if c["dataset"].get("synthetic") else ""
    fig.suptitle(
        f"Validation DSC (reference protocol, each run's metrics.jsonl), {len(curves)} run(s), "
        f"one line per seed{synth}",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)
    return path.name


def add_efficiency(
    out: str | Path, c: Comparison, *, resamples: int | None = None, seed: int | None = None
) -> dict[str, str]:
    """Write the data-efficiency figures of the study ``c`` (the comparison dict) into ``out``, add them to
    ``c["figures"]`` (so ``comparison.md`` links them) and their numbers to ``c["efficiency"]``. Returns the
    figures written ({title: file name}). Bootstrap settings default to the paired statistics' own."""
    out = Path(out)
    settings: EfficiencySettings = {
        "resamples": DEFAULT_RESAMPLES if resamples is None else resamples,
        "seed": DEFAULT_SEED if seed is None else seed,
        "ci": "95 % percentile bootstrap of cases and seeds",
        "images": "iterations x train.batch_size",
    }
    fractions = fraction_curves(c, resamples=settings["resamples"], seed=settings["seed"])
    curves = learning_curves(c)
    figures: dict[str, str] = {}
    if fractions:
        figures["DSC vs training fraction"] = _plot_fractions(out / FRACTION_FIGURE, c, fractions, settings)
    if any(r["points"] for r in curves):
        title = "validation DSC vs images seen and wall time"
        figures[title] = _plot_learning(out / LEARNING_FIGURE, c, curves)
    c["efficiency"] = {"settings": settings, "fraction": fractions, "learning": curves}
    c.setdefault("figures", {}).update(figures)
    return figures


__all__ = ["add_efficiency", "fraction_curves", "learning_curve", "learning_curves"]
