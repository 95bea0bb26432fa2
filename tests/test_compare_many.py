"""``organseg compare`` with more than two networks: the comparisons made (each against the baseline, or every
pair), Holm's correction over the organs x the comparisons, and the ranking with its bootstrap stability.

Everything runs on synthetic per-subject results with known differences (no training): per-case records
written as ``organseg test`` writes them into fake run folders, then ``compare --collect``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from helpers import one_line_error
from organseg.cli.main import main
from organseg.errors import ConfigError
from organseg.evaluation.evaluate import EvaluationResult
from organseg.fileio import file_sha256
from organseg.study import collect
from organseg.study.comparison import Comparison, KendallSummary, RankEntry, RankingRecord
from organseg.study.paired import (
    adjust_families,
    comparison_pairs,
    holm,
    paired_table,
    study_paired,
)
from organseg.study.ranking import kendall_tau_b, min_ranks, rank_networks, subject_means
from record_keys import Keys, check_comparison

CLASSES = ["background", "spleen", "kidney", "liver"]  # not a published dataset's: no published rows
ORGANS = CLASSES[1:]
SUBJECTS = 12


# ------------------------------------------------------------------------------------ synthetic results


def case_records(dice: np.ndarray, subjects: list[str]) -> list[dict]:
    """Per-case records (``per_case.json``) of one run: ``dice`` (volumes, organs), every organ scored,
    HD95 falling as DSC rises."""
    out = []
    for v, row in enumerate(dice):
        classes = {}
        for name, d in zip(ORGANS, row, strict=True):
            hd = float(20.0 * (1.0 - d) + 1.0)
            classes[name] = {
                "reference": {"dice": float(d), "hd95": hd},
                "corrected": {"dice": float(d), "hd95": hd},
                "status": "scored",
            }
        out.append(
            {
                "case": f"case{v:02d}",
                "subject": subjects[v],
                "spacing": None,
                "mean_dice_reference": float(np.mean(row)),
                "classes": classes,
            }
        )
    return out


def network_dice(offset: float, seed: int, volumes: int = 2 * SUBJECTS) -> np.ndarray:
    """(volumes, organs) DSC: a subject effect shared by every network (seed 0), the network's ``offset`` and
    its own noise."""
    subject = np.repeat(np.random.default_rng(0).normal(0.7, 0.08, volumes // 2), 2)
    noise = np.random.default_rng(seed).normal(0, 0.02, (volumes, len(ORGANS)))
    return np.clip(subject[:, None] + offset + noise, 0.01, 0.99)


def fake_run(root: Path, model: str, seed: int, dice: np.ndarray) -> Path:
    """A run folder as ``organseg train`` + ``organseg test`` leave it, as far as ``compare --collect``
    reads it: config.yaml, checkpoints/last.pt and its test results (two volumes per subject)."""
    subjects = [f"patient{v // 2:02d}" for v in range(dice.shape[0])]
    run = root / f"{model}__seed{seed}"
    (run / "checkpoints").mkdir(parents=True)
    cfg = {"model": {"name": model, "args": {}}, "train": {"seed": seed}, "data": {"root": None}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.write_bytes(f"{model} {seed}".encode())
    result = EvaluationResult.from_per_case(case_records(dice, subjects), CLASSES, "test")
    extra = {"checkpoint": str(ckpt), "checkpoint_sha256": file_sha256(ckpt), "precision": "fp32"}
    result.write(run / "results" / "test_last", extra)
    return run


# Four networks, known order: best > good > unet (the baseline) ~ twin (unet's twin: the same distribution).
OFFSETS = {"unet": 0.0, "twin": 0.0, "good": 0.04, "best": 0.15}


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("four")
    for k, (model, offset) in enumerate(OFFSETS.items()):
        for seed in (1, 2):
            fake_run(root / "runs", model, seed, network_dice(offset, 100 * k + seed))
    return root


# ------------------------------------------------------------------------------------------- comparisons


def test_comparison_pairs_against_the_baseline_or_all():
    models = ["swin", "unet", "x"]
    assert comparison_pairs(models, "unet") == [("unet", "swin"), ("unet", "x")]
    assert comparison_pairs(models, "unet", "all") == [("unet", "swin"), ("unet", "x"), ("swin", "x")]
    assert comparison_pairs(["unet"], "unet", "all") == []
    with pytest.raises(ValueError, match="pairs"):
        comparison_pairs(models, "unet", "some")


def _groups(per_model: dict[str, list[list[dict]]]) -> tuple[list[dict], dict[str, list[dict]]]:
    """Groups (as aggregate writes them) and their runs' per-case records, for study_paired."""
    groups, dirs = [], {}
    for model, runs in per_model.items():
        names = [f"{model}__seed{s}" for s in range(len(runs))]
        dirs.update(zip(names, runs, strict=True))
        block = {"hd95_unit": "voxel"}
        groups.append(
            {
                "model": model,
                "sweep": {},
                "label": model,
                "n": len(runs),
                "runs": names,
                "reference": block,
                "corrected": block,
            }
        )
    return groups, dirs


def _per_model(models: list[str]) -> dict[str, list[list[dict]]]:
    subjects = [f"patient{v // 2:02d}" for v in range(2 * SUBJECTS)]
    return {
        m: [case_records(network_dice(OFFSETS[m], 100 * k + s), subjects) for s in (1, 2)]
        for k, m in enumerate(models)
    }


COLUMNS = [(name.capitalize(), i + 1) for i, name in enumerate(ORGANS)]


def test_two_networks_are_adjusted_as_before_over_the_organs_only():
    """With two networks the family is the organs of the one comparison, and the mean row keeps its p: the
    records equal paired_table's (the correction before several networks)."""
    per = _per_model(["unet", "good"])
    groups, dirs = _groups(per)
    recs, settings, _ = study_paired(groups, dirs, CLASSES, COLUMNS, resamples=500)
    assert settings["baseline"] == "unet" and settings["pairs"] == "baseline"
    subjects = [f"patient{v // 2:02d}" for v in range(2 * SUBJECTS)]
    for protocol in ("reference", "corrected"):
        for metric in ("dice", "hd95"):

            def arr(model: str, protocol: str = protocol, metric: str = metric) -> np.ndarray:
                return np.stack(
                    [[[c["classes"][o][protocol][metric] for o in ORGANS] for c in run] for run in per[model]]
                )

            titles = [t for t, _ in COLUMNS]
            expected = paired_table(
                arr("unet"), arr("good"), titles, metric, subjects=subjects, resamples=500
            )
            got = [r for r in recs if (r["protocol"], r["metric"]) == (protocol, metric)]
            assert [r["organ"] for r in got] == [e["organ"] for e in expected]
            for r, e in zip(got, expected, strict=True):
                for key in ("diff", "ci_low", "ci_high", "p", "p_holm", "significant"):
                    assert r[key] == e[key], (protocol, metric, r["organ"], key)
                assert r["comparisons"] == 1
                assert r["family_size"] == (1 if r["organ"] == "mean" else len(ORGANS))
    mean_rows = [r for r in recs if r["organ"] == "mean"]
    assert all(r["p_holm"] == r["p"] for r in mean_rows)


def test_holm_covers_the_organs_times_the_comparisons():
    per = _per_model(["unet", "twin", "good", "best"])
    groups, dirs = _groups(per)
    recs, settings, _ = study_paired(groups, dirs, CLASSES, COLUMNS, resamples=200)
    pairs = list(dict.fromkeys((r["model_a"], r["model_b"]) for r in recs))
    assert pairs == [("unet", "twin"), ("unet", "good"), ("unet", "best")]
    for protocol in ("reference", "corrected"):
        for metric in ("dice", "hd95"):
            family = [
                r for r in recs if (r["protocol"], r["metric"]) == (protocol, metric) and r["organ"] != "mean"
            ]
            assert len(family) == 3 * len(ORGANS)
            np.testing.assert_allclose([r["p_holm"] for r in family], holm([r["p"] for r in family]))
            assert all(r["family_size"] == 9 and r["comparisons"] == 3 for r in family)
            means = [
                r for r in recs if (r["protocol"], r["metric"], r["organ"]) == (protocol, metric, "mean")
            ]
            np.testing.assert_allclose([r["p_holm"] for r in means], holm([r["p"] for r in means]))
            assert all(r["family_size"] == 3 for r in means)
    # A larger family is more conservative: the same comparison adjusted alone has a smaller p_holm.
    alone, _, _ = study_paired(
        *_groups({m: per[m] for m in ("unet", "good")}), CLASSES, COLUMNS, resamples=200
    )
    for r in alone:
        many = next(
            x
            for x in recs
            if (x["model_b"], x["protocol"], x["metric"], x["organ"])
            == ("good", r["protocol"], r["metric"], r["organ"])
        )
        assert many["p"] == r["p"] and many["p_holm"] >= r["p_holm"]
    # The clear differences stay significant; the twin's mean DSC is not told from the baseline's.
    dice_mean = {
        r["model_b"]: r
        for r in recs
        if (r["protocol"], r["metric"], r["organ"]) == ("corrected", "dice", "mean")
    }
    assert dice_mean["best"]["significant"] and dice_mean["good"]["significant"]
    assert not dice_mean["twin"]["significant"]
    # Every pair: 6 comparisons, the baseline's first.
    every, settings, _ = study_paired(groups, dirs, CLASSES, COLUMNS, pairs="all", resamples=200)
    pairs = list(dict.fromkeys((r["model_a"], r["model_b"]) for r in every))
    assert pairs[:3] == [("unet", "twin"), ("unet", "good"), ("unet", "best")]
    assert pairs[3:] == [("twin", "good"), ("twin", "best"), ("good", "best")]
    assert settings["pairs"] == "all"
    assert {r["family_size"] for r in every if r["organ"] != "mean"} == {6 * len(ORGANS)}
    # Another baseline: the others against it.
    other, settings, _ = study_paired(groups, dirs, CLASSES, COLUMNS, baseline="best", resamples=200)
    assert settings["baseline"] == "best"
    assert list(dict.fromkeys((r["model_a"], r["model_b"]) for r in other)) == [
        ("best", "unet"),
        ("best", "twin"),
        ("best", "good"),
    ]


def test_adjust_families_keeps_swept_values_apart():
    base = {"protocol": "corrected", "metric": "dice", "model_a": "a", "model_b": "b"}
    recs = [
        {**base, "organ": "Liver", "sweep": {"lr": 0.01}, "p": 0.02},
        {**base, "organ": "Liver", "sweep": {"lr": 0.05}, "p": 0.02},
        {**base, "organ": "Spleen", "sweep": {"lr": 0.05}, "p": 0.01},
    ]
    adjust_families(recs)
    assert recs[0]["p_holm"] == pytest.approx(0.02) and recs[0]["family_size"] == 1
    assert [r["p_holm"] for r in recs[1:]] == pytest.approx([0.02, 0.02])
    assert recs[0]["significant"] and recs[2]["family_size"] == 2


# ----------------------------------------------------------------------------------------------- ranking


def test_min_ranks_share_the_better_rank():
    assert min_ranks(np.array([0.5, 0.9, 0.5, 0.1])).tolist() == [2, 1, 2, 4]
    assert min_ranks(np.array([[1.0, 1.0], [0.0, 2.0]])).tolist() == [[1, 1], [2, 1]]
    assert min_ranks(np.array([np.nan, 0.2])).tolist() == [2, 1]


def test_kendall_tau_b_equals_scipy():
    rng = np.random.default_rng(3)
    reference = min_ranks(rng.normal(size=5))
    ranks = min_ranks(np.round(rng.normal(size=(50, 5)), 0))  # many ties
    ours = kendall_tau_b(ranks, reference)
    for row, tau in zip(ranks, ours, strict=True):
        expected = stats.kendalltau(row, reference).statistic
        if np.isnan(expected):
            assert np.isnan(tau)
        else:
            assert tau == pytest.approx(expected)
    assert np.isnan(kendall_tau_b(np.array([[1, 1, 1]]), np.array([1, 2, 3])))[0]


def _values(offsets: list[float], n: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    subject = rng.normal(0.7, 0.1, n)
    return np.stack([subject + o + rng.normal(0, 0.02, n) for o in offsets])


def test_a_clearly_best_network_ranks_first_in_every_resample():
    x = _values([0.0, 0.02, 0.3])
    entries, tau = rank_networks(x, ["a", "b", "c"], resamples=1000, seed=0)
    by = {e["model"]: e for e in entries}
    assert by["c"]["rank"] == 1 and by["c"]["rank_counts"][0] == 1000 and by["c"]["rank_frequency"][0] == 1.0
    assert by["c"]["mean_rank"] == 1.0
    assert by["b"]["rank"] == 2 and by["a"]["rank"] == 3
    assert sum(by["a"]["rank_counts"]) == 1000 and by["a"]["rank_counts"][0] == 0
    assert by["b"]["mean"] == pytest.approx(x[1].mean())
    assert tau["n"] == 1000 and tau["median"] > 0 and tau["q75"] <= 1.0


def test_two_identical_networks_split_the_ranks_and_the_seed_decides_the_draws():
    x = _values([0.0, 0.0, 0.0], seed=5)
    x[1] = x[0] + np.random.default_rng(9).normal(0, 0.02, x.shape[1])  # a twin of the first network
    x[2] = x[0] - 0.3  # clearly last
    entries, tau = rank_networks(x, ["a", "twin", "last"], resamples=1000, seed=1)
    first = {e["model"]: e["rank_frequency"][0] for e in entries}
    assert 0.1 < first["a"] < 0.9 and 0.1 < first["twin"] < 0.9
    assert first["a"] + first["twin"] == pytest.approx(1.0)
    assert entries[2]["rank_counts"] == [0, 0, 1000]
    assert tau["median"] is not None and tau["q25"] < 1.0  # the first two swap in some resamples
    again, _ = rank_networks(x, ["a", "twin", "last"], resamples=1000, seed=1)
    assert again == entries
    other, _ = rank_networks(x, ["a", "twin", "last"], resamples=1000, seed=2)
    assert other != entries


def test_exact_ties_share_rank_one_and_tau_is_undefined():
    x = _values([0.0], n=10)
    entries, tau = rank_networks(np.concatenate([x, x]), ["a", "b"], resamples=100, seed=0)
    assert [e["rank"] for e in entries] == [1, 1]
    assert all(e["rank_counts"] == [100, 0] for e in entries)
    assert tau == {"median": None, "mean": None, "q25": None, "q75": None, "n": 0}


def test_subject_means_pool_volumes_then_seeds_over_common_organs():
    subjects = ["p0", "p0", "p1", "p1"]
    a = np.array([[0.5, 0.7, 0.9], [0.3, 0.5, 0.7], [0.2, 0.2, 0.2], [0.4, 0.4, 0.4]])
    b = a + 0.1
    b_run = case_records(b, subjects)
    b_run[0]["classes"]["liver"]["corrected"]["dice"] = None  # not scored: left out of every network's mean
    x, names, volumes, unit = subject_means(
        [[case_records(a, subjects)], [b_run, case_records(b, subjects)]], ORGANS, "corrected"
    )
    assert names == ["p0", "p1"] and unit == "subject" and volumes == 4
    # p0, network a: volume 0 over spleen and kidney (0.6), volume 1 over all three (0.5): 0.55.
    assert x[0].tolist() == pytest.approx([0.55, 0.3])
    # network b: seed 1 has volume 0 at (0.6 + 0.8) / 2 = 0.7, seed 2 the same organs: 0.7; volume 1: 0.6.
    assert x[1].tolist() == pytest.approx([0.65, 0.4])


# ------------------------------------------------------------------------------------------- end to end


def test_collect_of_four_networks_ranks_them_and_writes_every_record(four, tmp_path, capsys):
    out = four
    assert main(["compare", "--collect", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    c: Comparison = json.loads((out / "comparison.json").read_text())
    assert c["models"] == ["unet", "best", "good", "twin"] and c["baseline"] == "unet"
    assert {(r["model_a"], r["model_b"]) for r in c["paired"]} == {
        ("unet", m) for m in ("best", "good", "twin")
    }
    assert {r["family_size"] for r in c["paired"] if r["organ"] != "mean"} == {3 * len(ORGANS)}
    assert [x["model"] for x in c["relative"]] == ["best", "good", "twin"]
    assert [x["model"] for x in c["cost"]] == c["models"]
    assert {r["protocol"] for r in c["ranking"]} == {"reference", "corrected"}
    for rec in c["ranking"]:
        ranks = {e["model"]: e for e in rec["networks"]}
        assert ranks["best"]["rank"] == 1 and ranks["best"]["rank_frequency"][0] == 1.0
        assert ranks["good"]["rank"] == 2 and ranks["good"]["rank_frequency"][1] > 0.95
        assert {ranks["unet"]["rank"], ranks["twin"]["rank"]} == {3, 4}
        assert 0.05 < ranks["unet"]["rank_frequency"][2] < 0.95  # the twins share ranks 3 and 4
        assert rec["n_subjects"] == SUBJECTS and rec["n_volumes"] == 2 * SUBJECTS
        assert rec["resamples"] == 1000 and rec["seed"] == 0 and rec["unit_of_analysis"] == "subject"
        assert rec["kendall_tau"]["n"] == 1000 and 0.5 < rec["kendall_tau"]["median"] <= 1.0
    keys = Keys()
    check_comparison(keys, c)
    for record in (RankingRecord, RankEntry, KendallSummary):
        keys.complete(record)
    md = (out / "comparison.md").read_text()
    verdict = md.split("## Verdict")[1].split("\n## ")[0]
    assert "**Ranking** by mean DSC over 12 subject(s), corrected protocol" in verdict
    assert (
        "1. best" in verdict
        and "significant differences of the mean DSC (Holm over the 3 comparisons)" in verdict
    )
    assert "best over unet" in verdict and "twin over unet" not in verdict and "unet over twin" not in verdict
    assert "## Ranking" in md and "| 1 | best |" in md and "100.0 %" in md
    assert "## Paired: twin − unet, corrected protocol" in md
    assert "Holm-adjusted over the organs × the 3 comparisons" in md
    assert "## Against unet" in md and "## Swin-Unet against U-Net" not in md
    assert (out / "comparison_ranks.png").is_file() and c["figures"][
        "ranking stability"
    ] == "comparison_ranks.png"
    assert "## Ranking" in printed
    # Deterministic: a second collect writes the same ranking and statistics.
    again = collect(tmp_path / "again", sorted((out / "runs").iterdir()))
    assert again["ranking"] == c["ranking"]
    assert [r["p_holm"] for r in again["paired"]] == [r["p_holm"] for r in c["paired"]]


def test_collect_with_another_baseline_and_every_pair(four, tmp_path):
    runs = sorted((four / "runs").iterdir())
    c = collect(tmp_path / "all", runs, baseline="twin", pairs="all", rank_resamples=200)
    assert c["baseline"] == "twin" and c["paired_settings"]["baseline"] == "twin"
    pairs = list(dict.fromkeys((r["model_a"], r["model_b"]) for r in c["paired"]))
    assert pairs == [
        ("twin", "unet"),
        ("twin", "best"),
        ("twin", "good"),
        ("unet", "best"),
        ("unet", "good"),
        ("best", "good"),
    ]
    assert [x["model"] for x in c["relative"]] == ["unet", "best", "good"]
    assert c["ranking"][0]["resamples"] == 200
    md = (tmp_path / "all" / "comparison.md").read_text()
    assert "## Paired: good − best, corrected protocol" in md and "## Against twin" in md
    csv = (tmp_path / "all" / "comparison.csv").read_text().splitlines()
    header = csv[0].split(",")
    assert "comparisons" in header and "family_size" in header
    paired_rows = [dict(zip(header, line.split(","), strict=True)) for line in csv[1:] if ",paired," in line]
    assert {r["family_size"] for r in paired_rows if r["column"] != "mean"} == {str(6 * len(ORGANS))}


def test_comparison_options_are_checked(four, tmp_path, capsys):
    runs = [str(p) for p in sorted((four / "runs").iterdir())]
    one_line_error(
        capsys,
        ["compare", "--collect", *runs, "--out", str(tmp_path / "a"), "--baseline", "vnet"],
        "--baseline vnet",
    )
    unet = [r for r in runs if "unet__" in r]
    one_line_error(
        capsys,
        ["compare", "--collect", *unet, "--out", str(tmp_path / "b"), "--pairs", "all"],
        "--pairs all",
        "unet",
    )
    one_line_error(
        capsys,
        ["compare", "--collect", *unet, "--out", str(tmp_path / "b"), "--baseline", "unet"],
        "--baseline",
    )
    with pytest.raises(ConfigError, match="--pairs some"):
        collect(tmp_path / "c", runs, pairs="some")
    # A single network without either option is a plain (unranked) comparison, as before.
    c = collect(tmp_path / "d", unet)
    assert c["paired"] == [] and c["ranking"] == [] and c["baseline"] == "unet"
