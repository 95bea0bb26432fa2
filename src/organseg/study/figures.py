"""The study's figures: per-organ grouped bars (DSC and HD95, error bars = std over seeds) and DSC / HD95
against each swept key, next to ``comparison.md`` (``data.train_fraction`` has its own figure, with
bootstrap bands: :mod:`organseg.study.efficiency`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from organseg.formatting import fmt_value, plot_value, pyplot, save_figure
from organseg.study.comparison import Comparison
from organseg.study.efficiency import FRACTION_KEY
from organseg.study.grid import evaluated_on, freeze, safe_name


def write_figures(out: Path, c: Comparison) -> dict[str, str]:
    """Per-organ grouped bars (DSC and HD95, error bars = std over seeds) and DSC vs each swept key."""
    figures = {"per-organ DSC and HD95": _plot_organs(out / "comparison_organs.png", c)}
    for key in c["sweep_keys"]:
        if key == FRACTION_KEY:  # drawn with its bootstrap band by organseg.study.efficiency instead
            continue
        path = _plot_sweep(out / f"comparison_sweep_{safe_name(key)}.png", c, key)
        if path is not None:
            figures[f"DSC vs {key}"] = path
    if c.get("ranking"):
        figures["ranking stability"] = _plot_ranks(out / RANK_FIGURE, c)
    return figures


RANK_FIGURE = "comparison_ranks.png"


def _plot_ranks(path: Path, c: Comparison) -> str:
    """challengeR's "blob plot": per ranking (protocol, swept values), each network (by its full-data rank,
    left to right) against the ranks it took in the bootstrap resamples, a disc's area the share of
    resamples, a black cross its full-data rank."""
    plt = pyplot()
    ranking = c["ranking"]
    protocols = list(dict.fromkeys(r["protocol"] for r in ranking))
    combos = list(dict.fromkeys(freeze(r["sweep"]) for r in ranking))
    k = max(len(r["networks"]) for r in ranking)
    fig, axes = plt.subplots(
        len(combos),
        len(protocols),
        figsize=(max(4.0, 1.0 + 0.9 * k) * len(protocols), (1.2 + 0.55 * k) * len(combos) + 0.6),
        squeeze=False,
    )
    for rec in ranking:
        ax = axes[combos.index(freeze(rec["sweep"]))][protocols.index(rec["protocol"])]
        order = sorted(rec["networks"], key=lambda e: e["rank"])
        for x, e in enumerate(order):
            ranks = np.arange(1, len(e["rank_frequency"]) + 1)
            freq = np.asarray(e["rank_frequency"])
            shown = freq > 0
            color = (
                _model_color(c["models"].index(e["model"])) if e["model"] in c["models"] else (0.3, 0.3, 0.3)
            )
            ax.scatter(np.full(shown.sum(), x), ranks[shown], s=600 * freq[shown], color=color, alpha=0.8)
            ax.scatter([x], [e["rank"]], marker="x", color="black", s=30, zorder=3)
        ax.set_xticks(range(len(order)), [e["model"] for e in order], rotation=20, fontsize=8)
        ax.set_yticks(range(1, len(order) + 1))
        ax.set_ylim(len(order) + 0.6, 0.4)
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.set_ylabel("rank")
        ax.grid(alpha=0.3)
        sweep = ", ".join(f"{key}={fmt_value(v)}" for key, v in rec["sweep"].items())
        ax.set_title(f"{rec['protocol']} protocol" + (f", {sweep}" if sweep else ""), fontsize=8)
    synth = " — SYNTHETIC DATA" if c["dataset"]["synthetic"] else ""
    fig.suptitle(
        f"Ranks by mean DSC over {ranking[0]['resamples']:,} bootstrap resamples of the subjects "
        f"(disc area: share; ×: full data){synth}",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)
    return path.name


def _model_color(index: int) -> tuple[float, float, float]:
    from matplotlib import colormaps  # noqa: PLC0415 (matplotlib: not on the command line's start-up)

    return tuple(colormaps["tab10"](index % 10)[:3])  # type: ignore[return-value]


def _group_colors(c: Comparison) -> list[tuple[float, float, float]]:
    """One colour family per network; its swept variants go from the full colour towards white."""
    out = []
    for g in c["groups"]:
        variants = [x for x in c["groups"] if x["model"] == g["model"]]
        k, n = variants.index(g), len(variants)
        base = np.array(_model_color(c["models"].index(g["model"])))
        out.append(tuple(base + (1.0 - base) * 0.6 * k / max(n - 1, 1)))
    return out


def _plot_organs(path: Path, c: Comparison) -> str:
    plt = pyplot()
    titles = ["mean", *c["dataset"]["columns"]]
    groups = c["groups"]
    pub = c.get("published")
    pub_rows = []
    if pub:
        for m in c["models"]:
            row = pub["rows"].get(pub["model_row"].get(m, ""))
            if row:
                pub_rows.append((f"{pub['model_row'][m]} (paper)", row, m))
    n_series = len(groups) + len(pub_rows)
    width = 0.8 / max(n_series, 1)
    x = np.arange(len(titles))
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.9 * len(titles) * max(1, n_series / 3) + 2), 6.6))
    colors = _group_colors(c)
    for panel, (ax, metric) in enumerate(zip(axes, ("dice", "hd95"), strict=True)):
        scale = 100.0 if metric == "dice" else 1.0
        for k, g in enumerate(groups):
            s = g["reference"]
            stats = [s[f"mean_{metric}"]] + [s["columns"][t][metric] for t in titles[1:]]
            mean = [plot_value(st["mean"], scale) for st in stats]
            err = [0.0 if st["std"] is None else st["std"] * scale for st in stats]
            # Neither metric can be negative: clip the lower error bar at zero.
            low = [min(e, m) if np.isfinite(m) else 0.0 for e, m in zip(err, mean, strict=True)]
            ax.bar(
                x + (k - (n_series - 1) / 2) * width,
                mean,
                width,
                yerr=[low, err] if any(st["std"] is not None for st in stats) else None,  # none for n = 1
                capsize=2,
                color=colors[k],
                label=f"{g['label']} (n={g['n']})" if panel == 0 else None,
                error_kw={"elinewidth": 0.8},
            )
        for j, (name, row, model) in enumerate(pub_rows):
            key = "DSC" if metric == "dice" else "HD95"
            vals = [row.get(key)] + [row.get(t) if metric == "dice" else None for t in titles[1:]]
            vals = [np.nan if v is None else v for v in vals]
            ax.bar(
                x + (len(groups) + j - (n_series - 1) / 2) * width,
                vals,
                width,
                color="white",
                edgecolor=_model_color(c["models"].index(model)),
                hatch="//",
                label=name if panel == 0 else None,
            )
        ax.set_xticks(x, titles, rotation=20, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        unit = groups[0]["reference"]["hd95_unit"] if groups else "voxel"
        ax.set_ylabel("DSC (%)" if metric == "dice" else f"HD95 ({unit})")
        if metric == "dice":
            ax.set_ylim(0, 105)
    synth = " — SYNTHETIC DATA" if c["dataset"]["synthetic"] else ""
    axes[0].set_title(
        f"Per-organ DSC and HD95, {evaluated_on(c)}, reference protocol, mean ± std over seeds{synth}",
        fontsize=9,
    )
    fig.legend(loc="lower center", ncol=min(n_series, 3), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.02 + 0.025 * math.ceil(n_series / 3), 1, 1))
    save_figure(fig, path)
    return path.name


def _plot_sweep(path: Path, c: Comparison, key: str) -> str | None:
    plt = pyplot()
    others = [k for k in c["sweep_keys"] if k != key]
    lines: dict[str, list[tuple[Any, dict, dict]]] = {}
    colors = _group_colors(c)
    line_color: dict[str, tuple[float, float, float]] = {}
    for g in c["groups"]:
        name = g["model"] + "".join(f", {k}={fmt_value(g['sweep'][k])}" for k in others)
        s = g["reference"]
        lines.setdefault(name, []).append((g["sweep"][key], s["mean_dice"], s["mean_hd95"]))
        line_color.setdefault(name, colors[c["groups"].index(g)])
    values = list(dict.fromkeys(freeze(v) for pts in lines.values() for v, _, _ in pts))
    if len(values) < 2:
        return None
    decoded = [json.loads(v) for v in values]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in decoded)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, pts in lines.items():
        if numeric:
            pts = sorted(pts, key=lambda p: p[0])
            xs = [p[0] for p in pts]
        else:
            xs = [values.index(freeze(p[0])) for p in pts]
        for ax, idx, scale in ((axes[0], 1, 100.0), (axes[1], 2, 1.0)):
            ys = [plot_value(p[idx]["mean"], scale) for p in pts]
            es = [0.0 if p[idx]["std"] is None else p[idx]["std"] * scale for p in pts]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name, color=line_color[name])
    unit = c["groups"][0]["reference"]["hd95_unit"]
    for ax, ylabel in ((axes[0], "mean DSC (%)"), (axes[1], f"mean HD95 ({unit})")):
        if numeric and min(decoded) > 0 and max(decoded) / min(decoded) >= 4:
            ax.set_xscale("log")
        if numeric:
            ax.set_xticks(sorted(decoded), [fmt_value(v) for v in sorted(decoded)])
            ax.minorticks_off()
        else:
            ax.set_xticks(range(len(decoded)), [fmt_value(v) for v in decoded])
        ax.set_xlabel(key)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    synth = " — SYNTHETIC DATA" if c["dataset"]["synthetic"] else ""
    fig.suptitle(f"{evaluated_on(c)}, reference protocol, mean ± std over seeds{synth}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path.name
