"""The written comparison: ``comparison.md`` (sections in :data:`SECTIONS`), ``comparison.json``,
``comparison.csv`` and the console table, all from the comparison dict of
:func:`organseg.study.aggregate.collect`.

``comparison.md`` holds a verdict from the numbers, the ranking of the networks with its bootstrap stability,
paper-format tables (mean ± std over seeds), the published rows, paired statistics per protocol, the HD95
change, the sweep table and the cost table. The paired statistics (computed by :mod:`organseg.study.paired`,
written by :mod:`organseg.study.verdict`) and the cost table (:mod:`organseg.study.cost`) are written there;
this module places them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from organseg.fileio import atomic_write_text
from organseg.formatting import MISSING, duration, fmt_value, num, pm, signed_pct
from organseg.metrics import PROTOCOLS
from organseg.study.comparison import Comparison
from organseg.study.cost import cost_markdown
from organseg.study.grid import evaluated_on, freeze
from organseg.study.verdict import paired_markdown, ranking_markdown, ranking_verdict, verdict_markdown

Lines = list[str]
Column = tuple[str, Callable[[Mapping[str, Any]], str]]  # header, cell of a record

PROTOCOL_TITLES = {
    "reference": "Reference protocol (the papers' test.py; comparable with the published rows)",
    "corrected": "Corrected protocol (absent organs not scored, missed organs count 0)",
}
# The sections of comparison.md the console shows (by heading).
CONSOLE_SECTIONS = (
    "## Verdict",
    "## Ranking",
    "## Reference protocol",
    "## Paired",
    "## Swin-Unet against",
    "## Against",
    "## Sweep",
    "## Cost",
)
# comparison.csv's columns for the paired rows (kind "paired"; the summary rows leave them empty)
_PAIRED_FIELDS = (
    "kind",
    "baseline",
    "metric",
    "a",
    "b",
    "diff",
    "ci_low",
    "ci_high",
    "p",
    "p_holm",
    "wins",
    "losses",
    "significant",
    "seeds_a",
    "seeds_b",
    "resampled",
    "unit_of_analysis",
    "n_subjects",
    "n_volumes",
    "comparisons",
    "family_size",
)
# comparison.csv's columns of the summary rows; the swept keys go after "model".
_SUMMARY_FIELDS = (
    "protocol",
    "column",
    "n",
    "seeds",
    "dice_mean",
    "dice_std",
    "hd95_mean",
    "hd95_std",
    "hd95_unit",
)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> Lines:
    return [_row(header), "|---" * len(header) + "|", *(_row(r) for r in rows)]


def _columns_table(columns: Sequence[Column], records: Sequence[Mapping[str, Any]]) -> Lines:
    return _table([h for h, _ in columns], [[cell(r) for _, cell in columns] for r in records])


def _unit_text(unit: str) -> str:
    return "voxels" if unit == "voxel" else unit


# ------------------------------------------------------------------------------------------ the sections


def _header(c: Comparison) -> Lines:
    synthetic = c["dataset"]["synthetic"]
    lines = ["# organseg comparison" + (" (SYNTHETIC DATA)" if synthetic else ""), ""]
    if synthetic:
        lines += [
            "> **SYNTHETIC DATA.** These numbers come from organseg's phantom generator, not from patients. "
            "They show that the pipeline works; they say nothing about the networks on real CT. The "
            "published rows are from real Synapse CT and are shown for the table format only.",
            "",
        ]
    lines += [
        f"{len(c['runs'])} run(s), {evaluated_on(c)}, checkpoint `{c['checkpoint']}.pt`; values are "
        "mean ± sample standard deviation over seeds (n = number of seeds). DSC in %.",
        "",
    ]
    for note in c.get("notes", []):
        lines += [note, ""]
    return lines


def _verdict(c: Comparison) -> Lines:
    """The conditions, the ranking (when the study ranks networks), then each compared pair."""
    paired = c.get("paired") or []
    lines = verdict_markdown(paired, c.get("cost") or [], c.get("paired_settings") or {})
    opening = [conditions_markdown(c), ""] if conditions_markdown(c) else []
    opening += ranking_verdict(c.get("ranking") or [], paired)
    if not opening:
        return lines
    if not lines:
        return ["## Verdict", "", *opening]
    return [*lines[:2], *opening, *lines[2:]]


def _ranking(c: Comparison) -> Lines:
    return ranking_markdown(c.get("ranking") or [])


def _count(v: float | None, digits: int = 0) -> str:
    return MISSING if v is None else f"{v:,.{digits}f}"


def conditions_markdown(c: Comparison) -> str:
    """The verdict's opening paragraph: the conditions it holds under, from the runs' records
    (``comparison.json["conditions"]``): folds or split, what chose the checkpoint, and per network the
    budget, initialisation, data fraction and device; which networks were still improving at their end."""
    cond = c.get("conditions")
    if not cond:
        return ""
    settings = c.get("paired_settings") or {}
    cv = c.get("cross_validation")
    if cv:
        where = (
            f"{cv['folds']}-fold cross-validation over {cv['subjects']} subjects ({cv['volumes']} volumes): "
            "every subject is predicted once, by the fold model that never saw it"
            + (f" (folds seeded {cv['fold_seed']}, listed in splits.json)" if cv.get("splits_file") else "")
        )
        seeds = len(cv["spread"]) > len({x["model"] for x in cv["spread"]})
        spread = "; ".join(
            f"{s['model']}"
            + (f" seed {s['seed']}" if seeds else "")
            + f" {pm(s['mean_dice_across_folds'], 100)} "
            f"(range {num(s['min'], scale=100)}–{num(s['max'], scale=100)})"
            for s in cv["spread"]
        )
        where += f". Mean DSC per fold (reference protocol), mean ± std over folds: {spread}"
    else:
        n = settings.get("subjects")
        where = f"the {cond['split']} split" + (
            f" ({n} subject(s), {settings.get('cases')} volume(s))" if n is not None else ""
        )
    parts = [f"**Conditions.** This verdict holds for {where}. Checkpoint: {cond['selection']}."]
    for model, m in cond["models"].items():
        init = ", ".join("from scratch" if i == "scratch" else f"initialised from {i}" for i in m["init"])
        fraction = ", ".join(
            "all training data" if f >= 1 else f"{f:g} of the training subjects" for f in m["train_fraction"]
        )
        budgets = ", ".join(f"{b:g}" for b in m["time_budget_min"])
        budget = f" (budget {budgets} min)" if budgets else ""
        device = ", ".join(m["device"]) or "an unrecorded device"
        threads = f", {', '.join(map(str, m['threads']))} thread(s)" if m["threads"] else ""
        minutes = m["train_minutes"]
        trained = duration(None if minutes is None else 60 * minutes, "minutes")
        parts.append(
            f"{model}: {m['runs']} run(s), {init}, {fraction}, trained {trained} per run"
            f"{budget}: {_count(m['iterations'])} iterations, {_count(m['epochs'], 1)} epochs, "
            f"{_count(m['images_seen'])} images seen, {', '.join(m['precision'])} on {device}{threads}."
        )
    for model, m in cond["models"].items():
        if m["still_improving"]:
            parts.append(
                f"{model} was still improving at the end of {len(m['still_improving'])} of its "
                f"{m['runs']} run(s) "
                f"(by its {' / '.join(x for x in m['improving_by'] if x != 'no record')}): more training may "
                "change this result."
            )
    return " ".join(parts)


def _folds(c: Comparison) -> Lines:
    rows = c.get("folds")
    if not rows:
        return []
    table = [
        [
            r["model"],
            str(r["seed"]),
            str(r["fold"]),
            str(r["subjects"]),
            str(r["volumes"]),
            num(r["reference"]["mean_dice"], scale=100),
            num(r["reference"]["mean_hd95"]),
            num(r["corrected"]["mean_dice"], scale=100),
        ]
        for r in rows
    ]
    return [
        "## Cross-validation folds",
        "",
        "Each fold's model on its own held-out subjects (the tables above pool the folds: every subject "
        "once).",
        "",
        *_table(
            ["Model", "seed", "fold", "subjects", "volumes", "DSC (ref)", "HD95 (ref)", "DSC (corr)"], table
        ),
        "",
    ]


def _protocol_section(c: Comparison, p: str) -> Lines:
    """One protocol: DSC table (with the published rows under the reference protocol), per-organ HD95,
    surface metrics (corrected), paired statistics."""
    titles = c["dataset"]["columns"]
    pub = c.get("published")
    unit = c["groups"][0][p]["hd95_unit"] if c["groups"] else "voxel"
    lines = [f"## {PROTOCOL_TITLES[p]}", "", f"HD95 in {_unit_text(unit)}.", ""]
    table = _table(["Method", "n", "DSC", "HD95", *titles], [])
    if pub and p == "reference":
        for name, row in pub["rows"].items():
            cells = [num(row.get(t)) for t in ["DSC", "HD95", *titles]]
            table.append(f"| {name} (paper) | | " + " | ".join(cells) + " |")  # an empty n cell
    for g in c["groups"]:
        s = g[p]
        cells = [pm(s["mean_dice"], 100), pm(s["mean_hd95"])] + [
            pm(s["columns"][t]["dice"], 100) for t in titles
        ]
        table.append(_row([g["label"], str(g["n"]), *cells]))
    hd95 = [[g["label"], *(pm(g[p]["columns"][t]["hd95"]) for t in titles)] for g in c["groups"]]
    lines += [*table, "", "Per-organ HD95:", "", *_table(["Method", *titles], hd95), ""]
    if p == "corrected" and any(g[p].get("mean_nsd", {}).get("n") for g in c["groups"]):
        lines += _surface_lines(c)
    return lines + paired_markdown(c.get("paired") or [], p, unit, c.get("paired_settings") or {})


def _protocols(c: Comparison) -> Lines:
    return [line for p in PROTOCOLS for line in _protocol_section(c, p)]


def _surface_lines(c: Comparison) -> Lines:
    """Mean NSD / ASSD per network (corrected protocol) under the corrected tables."""
    tol = c["groups"][0]["corrected"].get("nsd_tolerance")
    unit = c["groups"][0]["corrected"]["hd95_unit"]
    tol_text = MISSING if not tol else ", ".join(f"{t:g}" for t in dict.fromkeys(tol))
    rows = [
        [g["label"], pm(g["corrected"]["mean_nsd"], 100), pm(g["corrected"]["mean_assd"])]
        for g in c["groups"]
    ]
    return [
        f"Surface metrics: NSD at a tolerance of {tol_text} {_unit_text(unit)} (%), "
        "ASSD in the HD95 unit; mean ± std over seeds.",
        "",
        *_table(["Method", "NSD", "ASSD"], rows),
        "",
    ]


def _sweep_text(sweep: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in sweep.items()) or MISSING


_RELATIVE_COLUMNS: tuple[Column, ...] = (
    ("Model", lambda r: r["model"]),
    ("vs", lambda r: r["baseline"]),
    ("swept", lambda r: _sweep_text(r["sweep"])),
    ("HD95 change (reference)", lambda r: signed_pct(r["reference"]["hd95_change"])),
    ("HD95 change (corrected)", lambda r: signed_pct(r["corrected"]["hd95_change"])),
    ("ΔDSC (reference)", lambda r: num(r["reference"]["dice_points"], "+.2f")),
)


def _relative(c: Comparison) -> Lines:
    if not c["relative"]:
        return []
    base = c["baseline"]
    lines = [
        "## Swin-Unet against U-Net"
        if base == "unet" and sorted(c["models"]) == ["swin_unet", "unet"]
        else f"## Against {base}",
        "",
        f"Relative HD95 change (HD95_model − HD95_{base}) / HD95_{base} of the mean "
        "over seeds (negative: smaller boundary errors), and the DSC difference in points.",
        "",
        *_columns_table(_RELATIVE_COLUMNS, c["relative"]),
    ]
    pub = c.get("published")
    if pub and pub.get("relative_hd95"):
        pubs = ", ".join(f"{m} {signed_pct(v)}" for m, v in pub["relative_hd95"].items())
        seed = ""  # the write-up's number is Swin-Unet against U-Net, so it goes only beside that comparison
        if base == "unet" and "swin_unet" in pub["relative_hd95"]:
            seed = " The seed reproduction write-up measured −14% (Swin-Unet against U-Net)."
        lines += ["", f"Published (Swin-Unet paper): {pubs}.{seed}"]
    return [*lines, ""]


def _sweep(c: Comparison) -> Lines:
    keys, models = c["sweep_keys"], c["models"]
    if not keys:
        return []
    rows = []
    for combo in dict.fromkeys(freeze(g["sweep"]) for g in c["groups"]):
        sweep = json.loads(combo)
        cells = [fmt_value(sweep.get(k)) for k in keys]
        for m in models:
            g = next((g for g in c["groups"] if g["model"] == m and freeze(g["sweep"]) == combo), None)
            ref = None if g is None else g["reference"]
            cells += [MISSING, MISSING] if ref is None else [pm(ref["mean_dice"], 100), pm(ref["mean_hd95"])]
        rows.append(cells)
    header = [*keys, *(f"{m} {what}" for m in models for what in ("DSC", "HD95"))]
    return [
        f"## Sweep: {', '.join(keys)}",
        "",
        "Mean DSC (%) and HD95, reference protocol, mean ± std over seeds.",
        "",
        *_table(header, rows),
        "",
    ]


def _cost(c: Comparison) -> Lines:
    return cost_markdown(c.get("cost") or [])


def _figures(c: Comparison) -> Lines:
    if not c.get("figures"):
        return []
    return [
        "## Figures",
        "",
        *(line for name, path in c["figures"].items() for line in (f"![{name}]({path})", "")),
    ]


_RUN_COLUMNS: tuple[Column, ...] = (
    ("run", lambda r: f"`{r['name']}`"),
    ("model", lambda r: r["model"]),
    ("seed", lambda r: str(r["seed"])),
    # A run that recorded 0 iterations (stopped by its budget before one step) says 0: only None is missing.
    ("iterations", lambda r: MISSING if r["iterations"] is None else str(r["iterations"])),
    ("train s", lambda r: MISSING if r["train_seconds"] is None else str(r["train_seconds"])),
    ("DSC (ref)", lambda r: num(r["reference"]["mean_dice"], scale=100)),
    ("HD95 (ref)", lambda r: num(r["reference"]["mean_hd95"])),
)


def _runs(c: Comparison) -> Lines:
    lines = ["## Runs", "", *_columns_table(_RUN_COLUMNS, c["runs"])]
    lines += [f"\nSkipped `{s['run_dir']}`: {s['reason']}" for s in c["skipped"]]
    if c.get("published"):
        lines += ["", f"Published rows: {c['published']['source']}."]
    return lines


#: comparison.md, top to bottom: each section is a function of the comparison dict returning its lines.
SECTIONS: tuple[Callable[[Comparison], Lines], ...] = (
    _header,
    _verdict,
    _ranking,
    _protocols,
    _folds,
    _relative,
    _sweep,
    _cost,
    _figures,
    _runs,
)


def comparison_markdown(c: Comparison) -> str:
    """``comparison.md``: the paper-format tables and everything else a reader needs."""
    return "\n".join(line for section in SECTIONS for line in section(c)) + "\n"


def console_table(c: Comparison) -> str:
    """What ``compare`` and ``demo`` print: comparison.md's sections in :data:`CONSOLE_SECTIONS` (the verdict,
    the ranking, reference-protocol table, paired tables, HD95 change, sweep and cost)."""
    keep, on = [], False
    for line in comparison_markdown(c).splitlines():
        if line.startswith("## "):
            on = line.startswith(CONSOLE_SECTIONS)
        if on:
            keep.append(line)
    return "\n".join(keep)


# -------------------------------------------------------------------------------------- CSV, JSON, files


def comparison_rows(c: Comparison) -> list[dict[str, Any]]:
    """``comparison.csv``: one row per (group, protocol, column); Dice as a fraction, the mean first; then one
    row per paired record (kind "paired", ``model`` is the second network, ``baseline`` the first)."""
    rows = []
    for g in c["groups"]:
        sweep = {k: fmt_value(v) for k, v in g["sweep"].items()}
        for p in PROTOCOLS:
            s = g[p]
            entries = [("mean", s["mean_dice"], s["mean_hd95"])]
            entries += [
                (t, s["columns"][t]["dice"], s["columns"][t]["hd95"]) for t in c["dataset"]["columns"]
            ]
            for col, d, h in entries:
                rows.append(
                    {
                        "model": g["model"],
                        **sweep,
                        "protocol": p,
                        "column": col,
                        "n": g["n"],
                        "seeds": " ".join(str(x) for x in g["seeds"]),
                        "dice_mean": d["mean"],
                        "dice_std": d["std"],
                        "hd95_mean": h["mean"],
                        "hd95_std": h["std"],
                        "hd95_unit": s["hd95_unit"],
                        "kind": "summary",
                    }
                )
    for r in c.get("paired") or []:
        rows.append(
            {
                "model": r["model_b"],
                **{k: fmt_value(v) for k, v in r["sweep"].items()},
                "protocol": r["protocol"],
                "column": r["organ"],
                "hd95_unit": r["unit"] if r["metric"] == "hd95" else None,
                "kind": "paired",
                "baseline": r["model_a"],
                **{k: r[k] for k in _PAIRED_FIELDS[2:]},
            }
        )
    return rows


def write_comparison(out: str | Path, c: Comparison) -> dict[str, Path]:
    """Write ``comparison.md``, ``.json`` and ``.csv`` atomically; returns their paths."""
    out = Path(out)
    paths = {"md": out / "comparison.md", "json": out / "comparison.json", "csv": out / "comparison.csv"}
    atomic_write_text(paths["json"], json.dumps(c, indent=1, default=str) + "\n")
    buf = io.StringIO()
    fields = ["model", *c["sweep_keys"], *_SUMMARY_FIELDS, *_PAIRED_FIELDS]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in comparison_rows(c):
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["md"], comparison_markdown(c))
    return paths
