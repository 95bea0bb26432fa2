"""The paired statistics in words: the paired tables of ``comparison.md``, its opening verdict and its
ranking section, written from the paired records (:func:`organseg.study.paired.study_paired`), the ranking
records (:mod:`organseg.study.ranking`) and the cost records (:mod:`organseg.study.cost`) only, so the text
always says what the numbers say.

A cell of a paired table reads ``+1.80 [−0.40, +4.10] p=0.12 (n.s.)``: the difference B − A (DSC in points,
HD95 in its unit), its 95 % bootstrap interval, the Holm-adjusted p and whether it is significant.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from organseg.formatting import MISSING, duration, fmt_value, num
from organseg.study.comparison import PairedRecord, PairedSettings, RankingRecord
from organseg.study.paired import ALPHA, HIGHER_IS_BETTER
from organseg.study.ranking import rank_order

MINUS = "\u2212"


def _signed(v: float | None, scale: float, digits: int) -> str:
    """A difference with its sign, its minus the typographic one (as the paired tables' titles write it)."""
    return num(v, f"+.{digits}f", scale=scale).replace("-", MINUS)


def _p(p: float | None) -> str:
    """A p-value: two significant digits, or scientific notation below 0.001."""
    return num(p, ".2g" if p is not None and p >= 0.001 else ".1e")


def cell(rec: PairedRecord, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """``+1.80 [−0.40, +4.10] p=0.12 (n.s.)``: difference (with ``unit`` after it), bootstrap CI,
    Holm-adjusted p, verdict."""
    if rec.get("diff") is None:
        return MISSING
    mark = "significant" if rec.get("significant") else "n.s."
    return (
        f"{_signed(rec['diff'], scale, digits)}{unit} [{_signed(rec['ci_low'], scale, digits)}, "
        f"{_signed(rec['ci_high'], scale, digits)}] p={_p(rec.get('p_holm'))} ({mark})"
    )


def _pairs(paired: Sequence[PairedRecord]) -> list[tuple[str, str, str]]:
    """(model_a, model_b, sweep as JSON) in the order of the records."""
    return list(dict.fromkeys(_key(r) for r in paired))


def _key(r: PairedRecord) -> tuple[str, str, str]:
    return r["model_a"], r["model_b"], json.dumps(r.get("sweep") or {}, sort_keys=True, default=str)


def _sweep_text(sweep: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sweep.items())


def paired_markdown(
    paired: Sequence[PairedRecord], protocol: str, hd95_unit: str, settings: PairedSettings
) -> list[str]:
    """The paired table of one protocol for every compared pair (lines of ``comparison.md``)."""
    lines: list[str] = []
    for pair in dict.fromkeys(_key(r) for r in paired if r["protocol"] == protocol):
        recs = [r for r in paired if _key(r) == pair and r["protocol"] == protocol]
        a, b, sweep = pair[0], pair[1], json.loads(pair[2])
        first = recs[0]
        title = f"## Paired: {b} − {a}, {protocol} protocol" + (f" ({_sweep_text(sweep)})" if sweep else "")
        unit = "voxels" if hd95_unit == "voxel" else hd95_unit
        lines += [
            title.replace("−", MINUS),
            "",
            f"Difference {b} {MINUS} {a} over {_units(settings)} "
            f"({first['seeds_a']} and {first['seeds_b']} seed(s)), DSC in points, HD95 in {unit}; "
            f"{_unit_rule(settings)}; [95 % bootstrap interval, {settings['resamples']:,} resamples of the "
            f"{first['resampled']}, seed {settings['seed']}]; p: Wilcoxon signed-rank, {_holm_text(first)}, "
            f"significant when below {fmt_value(settings['alpha'])}. W/L: {_unit_name(settings)}s where {b} "
            "is better / worse (higher DSC, lower HD95).",
            "",
            f"| Organ | {a} DSC | {b} DSC | ΔDSC | W/L | {a} HD95 | {b} HD95 | ΔHD95 | W/L |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        organs = list(dict.fromkeys(r["organ"] for r in recs))
        organs = [o for o in organs if o != "mean"] + ["mean"]
        for organ in organs:
            d = next(r for r in recs if r["organ"] == organ and r["metric"] == "dice")
            h = next(r for r in recs if r["organ"] == organ and r["metric"] == "hd95")
            name = "**mean**" if organ == "mean" else organ
            lines.append(
                f"| {name} | {num(d['a'], scale=100)} | {num(d['b'], scale=100)} | {cell(d, 100)} | "
                f"{d['wins']}/{d['losses']} | {num(h['a'])} | {num(h['b'])} | {cell(h)} | "
                f"{h['wins']}/{h['losses']} |"
            )
        lines.append("")
    return lines


def _holm_text(rec: PairedRecord) -> str:
    """How the p-values of a paired table were adjusted: over the organs, or the organs x the comparisons."""
    k = rec.get("comparisons", 1)
    if k <= 1:
        return "Holm-adjusted over the organs (the mean row is one test, not adjusted)"
    return (
        f"Holm-adjusted over the organs × the {k} comparisons at these swept values (the mean rows: over "
        f"the {k} comparisons)"
    )


def _names(organs: Sequence[str]) -> str:
    organs = list(organs)
    if len(organs) <= 1:
        return "".join(organs)
    return ", ".join(organs[:-1]) + " and " + organs[-1]


def _ahead(recs: Sequence[PairedRecord], a: str, b: str, metric: str) -> str:
    """Which network is ahead on which organs (by the sign of the mean difference)."""
    better_b, better_a, equal = [], [], []
    hib = HIGHER_IS_BETTER[metric]
    for r in recs:
        if r["organ"] == "mean" or r["diff"] is None:
            continue
        if r["diff"] == 0:
            equal.append(r["organ"])
        elif (r["diff"] > 0) == hib:
            better_b.append(r["organ"])
        else:
            better_a.append(r["organ"])
    parts = []
    if better_b:
        parts.append(f"{b} on {_names(better_b)}")
    if better_a:
        parts.append(f"{a} on {_names(better_a)}")
    text = "; ".join(parts)
    if equal:
        text += ("; " if text else "") + f"equal on {_names(equal)}"
    return text or "no organ has a value for both"


def _significance(recs: Sequence[PairedRecord], a: str, b: str, metric: str, scale: float) -> str:
    organs = [r for r in recs if r["organ"] != "mean" and r["p_holm"] is not None]
    if not organs:
        return "no organ could be tested"
    sig = [r for r in organs if r["significant"]]
    hib = HIGHER_IS_BETTER[metric]
    k = organs[0].get("comparisons", 1)
    family = _organs(len(organs)) + (f" × the {k} comparisons" if k > 1 else "")
    if not sig:
        best = min(r["p_holm"] for r in organs)
        return (
            f"after Holm's correction over {family} none of the differences is significant "
            f"(smallest adjusted p = {_p(best)})"
        )
    items = []
    for r in sig:
        winner = b if (r["diff"] > 0) == hib else a
        items.append(f"{r['organ']} ({winner} better, {_signed(r['diff'], scale, 2)}, p={_p(r['p_holm'])})")
    return f"after Holm's correction over {family} significant: " + "; ".join(items)


def _organs(n: int) -> str:
    return "the 1 organ" if n == 1 else f"the {n} organs"


def _unit_name(settings: PairedSettings) -> str:
    return "volume" if settings.get("unit_of_analysis") == "volume" else "subject"


def _units(settings: PairedSettings) -> str:
    """``10 subjects (20 volumes)``, or ``20 volumes`` when each volume is its own unit."""
    n, volumes = settings.get("subjects", settings.get("cases", "?")), settings.get("cases", "?")
    if _unit_name(settings) == "volume":
        return f"{volumes} test volume(s)"
    return f"{n} subject(s) ({volumes} volume(s))"


def _unit_rule(settings: PairedSettings) -> str:
    if _unit_name(settings) == "volume":
        return "each volume counted as its own subject (its results do not record subjects)"
    return "the unit is the subject (patient): a subject's value is the mean over its volumes"


def _p_floor(recs: Sequence[PairedRecord], settings: PairedSettings) -> str:
    """The exact Wilcoxon test's smallest p for this n (every subject on one side: 2 / 2^n), said when it
    keeps the test from significance or when a p of the table sits on it."""
    n = settings.get("subjects", settings.get("cases"))
    if not isinstance(n, int) or n <= 0 or n > 50:
        return ""
    floor = 2.0 / 2**n
    smallest = num(floor, ".3g")
    alpha = settings.get("alpha", ALPHA)
    unit = _unit_name(settings)
    if floor >= alpha:
        return (
            f"With {n} paired {unit}(s) the smallest p the exact Wilcoxon test can give is {smallest}: "
            f"more {unit}s are needed for significance at {fmt_value(alpha)}."
        )
    if any(r.get("p") is not None and r["p"] <= floor * 1.000001 for r in recs):
        return (
            f"With {n} paired {unit}s the exact Wilcoxon test cannot give a p below 2/2^{n} = {smallest}; "
            "the p-values at that floor mean every subject favours the same network, not a stronger effect."
        )
    return ""


def _cost_sentence(
    cost: Sequence[dict[str, Any]], a: str, b: str, sweep: dict[str, Any], told: set[tuple[str, str]]
) -> str:
    """What A and B cost, each network's figures told once per swept values (``told`` collects them: with
    several networks against one baseline, the baseline's figures are in the first paragraph only); the FLOP
    ratio of the pair always."""
    by = {c["model"]: c for c in cost if (c.get("sweep") or {}) == sweep}
    parts = []
    for m in (a, b):
        c = by.get(m)
        key = (m, json.dumps(sweep, sort_keys=True, default=str))
        if c is None or key in told:
            continue
        told.add(key)
        bits = []
        if c.get("params") is not None:
            bits.append(f"{num(c['params'] / 1e6)} M parameters")
        if c.get("gflops_per_image") is not None:
            bits.append(f"{num(c['gflops_per_image'], '.3g')} GFLOPs per image")
        if c.get("train_images_per_s") is not None:
            bits.append(f"trained at {num(c['train_images_per_s'], '.1f')} images/s")
        if c.get("train_seconds") is not None:
            bits.append(f"in {duration(c['train_seconds'])} per run")
        if c.get("infer_seconds_per_volume") is not None:
            bits.append(f"predicted in {num(c['infer_seconds_per_volume'])} s per volume")
        if bits:
            parts.append(f"{m} has " + ", ".join(bits))
    text = "; ".join(parts)
    ca, cb = by.get(a), by.get(b)
    if ca and cb and ca.get("gflops_per_image") and cb.get("gflops_per_image"):
        ratio = ca["gflops_per_image"] / cb["gflops_per_image"]
        cheaper, other, k = (b, a, ratio) if ratio >= 1 else (a, b, 1 / ratio)
        flops = f"Per image {cheaper} needs {num(k, '.1f')}× fewer FLOPs than {other}"
        text = f"{text}. {flops}" if text else flops
    return f"Cost: {text}." if text else ""


def verdict_markdown(
    paired: Sequence[PairedRecord], cost: Sequence[dict[str, Any]], settings: PairedSettings
) -> list[str]:
    """The opening paragraph(s) of ``comparison.md``, generated from the paired records and the cost records
    only: which network is ahead where, what is significant after Holm's correction, what each costs."""
    if not paired:
        return []
    lines = ["## Verdict", ""]
    told: set[tuple[str, str]] = set()
    for a, b, sweep_json in _pairs(paired):
        sweep = json.loads(sweep_json)
        recs = [r for r in paired if _key(r) == (a, b, sweep_json)]
        first = recs[0]
        head = f"**{b} against {a}**" + (f" ({_sweep_text(sweep)})" if sweep else "")
        sentences = [
            f"{head}: {_units(settings)}, {first['seeds_a']} seed(s) of {a} and {first['seeds_b']} of {b}."
        ]
        for protocol in ("corrected", "reference"):
            prec = [r for r in recs if r["protocol"] == protocol]
            if not prec:
                continue
            d = [r for r in prec if r["metric"] == "dice"]
            h = [r for r in prec if r["metric"] == "hd95"]
            md = next(r for r in d if r["organ"] == "mean")
            mh = next(r for r in h if r["organ"] == "mean")
            label = "Corrected protocol" if protocol == "corrected" else "Reference protocol (the papers')"
            if md["diff"] is None:
                sentences.append(f"{label}: no {_unit_name(settings)} has a DSC for both.")
                continue
            s = (
                f"{label}: mean DSC {num(md['b'], scale=100)} % for {b}, "
                f"{num(md['a'], scale=100)} % for {a}, "
                f"difference {cell(md, 100, unit=' points')}"
            )
            if mh["diff"] is not None:
                s += f"; mean HD95 {num(mh['b'])} for {b}, {num(mh['a'])} for {a}, difference {cell(mh)}"
                if protocol == "corrected":
                    s += " (per volume over the organs found in every run of both)"
            sentences.append(s + ".")
            if protocol == "corrected":
                sentences.append(
                    f"DSC per organ, ahead: {_ahead(d, a, b, 'dice')}; {_significance(d, a, b, 'dice', 100)}."
                )
                sentences.append(
                    f"HD95 per organ, ahead (lower): {_ahead(h, a, b, 'hd95')}; "
                    f"{_significance(h, a, b, 'hd95', 1)}."
                )
        floor = _p_floor(recs, settings)
        if floor:
            sentences.append(floor)
        cost_text = _cost_sentence(cost, a, b, sweep, told)
        if cost_text:
            sentences.append(cost_text)
        lines += [" ".join(sentences), ""]
    return lines


# ------------------------------------------------------------------------------------------------ ranking


def _pct(v: float | None) -> str:
    return num(v, ".1f", scale=100)


def _order_text(rec: RankingRecord) -> str:
    """``1. swin_unet 81.20 %, 2. unet 80.10 %, 2. nnunet 80.10 %``."""
    return ", ".join(f"{e['rank']}. {e['model']} {num(e['mean'], scale=100)} %" for e in rank_order(rec))


def _mean_rows(paired: Sequence[PairedRecord], rec: RankingRecord) -> list[PairedRecord]:
    sweep = rec["sweep"]
    return [
        r
        for r in paired
        if r["organ"] == "mean"
        and r["metric"] == "dice"
        and r["protocol"] == rec["protocol"]
        and (r.get("sweep") or {}) == sweep
        and r["diff"] is not None
    ]


def _significant_text(paired: Sequence[PairedRecord], rec: RankingRecord) -> str:
    """Which of the compared pairs differ significantly in mean DSC (the paired mean rows)."""
    rows = _mean_rows(paired, rec)
    if not rows:
        return "no pair of networks was tested"
    k = rows[0].get("comparisons", 1)
    sig = [r for r in rows if r["significant"]]
    family = "" if k <= 1 else f" (Holm over the {k} comparisons)"
    items = []
    for r in sig:
        better, worse = (r["model_b"], r["model_a"]) if r["diff"] > 0 else (r["model_a"], r["model_b"])
        items.append(f"{better} over {worse} ({_signed(abs(r['diff']), 100, 2)} points, p={_p(r['p_holm'])})")
    if not items:
        return f"none of the {len(rows)} tested difference(s) of the mean DSC is significant{family}"
    rest = [f"{r['model_b']} − {r['model_a']} (p={_p(r['p_holm'])})" for r in rows if not r["significant"]]
    text = f"significant differences of the mean DSC{family}: " + "; ".join(items)
    return text + (f"; not significant: {', '.join(rest)}" if rest else "")


def _stability_text(rec: RankingRecord) -> str:
    order = rank_order(rec)
    parts = []
    for e in order:
        if not any(e["rank_counts"]):
            continue
        top = max(range(len(e["rank_frequency"])), key=lambda k: e["rank_frequency"][k])
        parts.append(
            f"{e['model']} ranks {e['rank']} in {_pct(e['rank_frequency'][e['rank'] - 1])} % of the resamples"
            + ("" if top == e["rank"] - 1 else f" (most often {top + 1}: {_pct(e['rank_frequency'][top])} %)")
        )
    tau = rec["kendall_tau"]
    text = "; ".join(parts)
    if tau["n"]:
        text += (
            f"; Kendall's τ between the bootstrap rankings and this one: median {num(tau['median'])} "
            f"(quartiles {num(tau['q25'])}–{num(tau['q75'])})"
        )
    return text


def ranking_verdict(ranking: Sequence[RankingRecord], paired: Sequence[PairedRecord]) -> list[str]:
    """The verdict's ranking paragraph(s), one per set of swept values (corrected protocol, else the
    first): the order by mean DSC, which differences are significant, how stable the order is."""
    lines = []
    for combo in dict.fromkeys(_sweep_key(r) for r in ranking):
        recs = [r for r in ranking if _sweep_key(r) == combo]
        rec = next((r for r in recs if r["protocol"] == "corrected"), recs[0])
        if not rec["n_subjects"]:
            continue
        sweep = f" ({_sweep_text(rec['sweep'])})" if rec["sweep"] else ""
        unit = "subject" if rec["unit_of_analysis"] == "subject" else "volume"
        lines += [
            f"**Ranking{sweep}** by mean DSC over {rec['n_subjects']} {unit}(s), {rec['protocol']} protocol "
            f"(equal means share the better rank): {_order_text(rec)}; {_significant_text(paired, rec)}. "
            f"Under {rec['resamples']:,} bootstrap resamples of the {unit}s: {_stability_text(rec)}.",
            "",
        ]
    return lines


def _sweep_key(r: RankingRecord) -> str:
    return json.dumps(r.get("sweep") or {}, sort_keys=True, default=str)


def ranking_markdown(ranking: Sequence[RankingRecord]) -> list[str]:
    """``## Ranking``: per protocol and swept values, the networks by mean DSC with their rank-frequency
    table (the share of bootstrap resamples in which each takes each rank) and Kendall's tau."""
    if not ranking:
        return []
    first = ranking[0]
    unit = "subject" if first["unit_of_analysis"] == "subject" else "volume"
    lines = [
        "## Ranking",
        "",
        f"Networks ranked by their mean DSC over the {unit}s (per volume the mean over the organs every run "
        f"has, per {unit} the mean over its volumes and seeds); equal means share the better rank (1, 1, 3). "
        f"Stability as challengeR reports it: {first['resamples']:,} bootstrap resamples of the {unit}s "
        f"(seed {first['seed']}), the networks ranked again on each; a cell is the share of resamples in "
        "which the network takes that rank. Kendall's τ compares each bootstrap ranking with the full-data "
        "one (1: the same order). Which differences are significant: the paired tables.",
        "",
    ]
    for rec in ranking:
        sweep = f", {_sweep_text(rec['sweep'])}" if rec["sweep"] else ""
        k = len(rec["networks"])
        tau = rec["kendall_tau"]
        tau_text = (
            f"median {num(tau['median'])}, mean {num(tau['mean'])}, quartiles {num(tau['q25'])}–"
            f"{num(tau['q75'])} ({tau['n']:,} resamples)"
            if tau["n"]
            else "undefined (every resample ties every network)"
        )
        lines += [
            f"{rec['protocol'].capitalize()} protocol{sweep}: {rec['n_subjects']} {unit}(s) "
            f"({rec['n_volumes']} volume(s)). Kendall's τ: {tau_text}.",
            "",
            "| Rank | Network | mean DSC | mean rank | "
            + " | ".join(f"rank {i + 1}" for i in range(k))
            + " |",
            "|---" * (4 + k) + "|",
        ]
        for e in rank_order(rec):
            cells = [f"{_pct(f)} %" for f in e["rank_frequency"]]
            lines.append(
                f"| {e['rank']} | {e['model']} | {num(e['mean'], scale=100)} | {num(e['mean_rank'])} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    return lines
