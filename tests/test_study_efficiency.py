"""Data-efficiency figures of ``organseg compare`` (issue 12): DSC against ``data.train_fraction`` with a
bootstrap band, validation DSC against images seen and wall time.

The bootstrap of one network's mean is checked against what it must be (the tables' number, the textbook
standard error, a degenerate sample); the learning curve against a hand-written ``metrics.jsonl``; the whole
path on a tiny SYNTHETIC study that sweeps the fraction (2 networks x 2 fractions, 4 iterations each)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from helpers import PNG_MAGIC, fraction_argv, fraction_phantom, write_presets
from organseg.cli.main import main
from organseg.study.comparison import FractionPoint, LearningPoint
from organseg.study.efficiency import FRACTION_FIGURE, LEARNING_FIGURE, learning_curve
from organseg.study.paired import bootstrap_mean, mean_ci
from record_keys import Keys, check_comparison

# ------------------------------------------------------------------------------------ the bootstrap mean


def test_mean_is_the_tables_number_with_unscored_cases_left_out():
    rng = np.random.default_rng(3)
    x = rng.random((3, 12, 4))  # seeds, cases, organs
    x[:, 5, 2] = np.nan  # an organ absent from one case's truth: not scored, in every run alike
    x[:, :, 3] = np.nan  # an organ no case has: out of the mean, as the summaries leave it out
    per_run = [np.mean([np.nanmean(x[s, :, k]) for k in range(3)]) for s in range(3)]
    rec = mean_ci(x, resamples=500, seed=0)
    assert rec["mean"] == pytest.approx(np.mean(per_run), abs=1e-12)
    assert rec["ci_low"] < rec["mean"] < rec["ci_high"] and rec["cases"] == 12


def test_bootstrap_spread_is_the_standard_error_of_the_mean():
    rng = np.random.default_rng(0)
    values = rng.normal(0.7, 0.1, 40)
    point, dist = bootstrap_mean(values[None, :], resamples=20_000, seed=1)
    assert point == pytest.approx(values.mean())
    # The bootstrap standard error of a mean is the plug-in sd / sqrt(n).
    assert dist.std() == pytest.approx(values.std(ddof=0) / np.sqrt(values.size), rel=0.03)
    rec = mean_ci(values[None, :], resamples=20_000, seed=1)
    half = 1.96 * values.std(ddof=0) / np.sqrt(values.size)
    assert rec["ci_low"] == pytest.approx(values.mean() - half, abs=0.1 * half)
    assert rec["ci_high"] == pytest.approx(values.mean() + half, abs=0.1 * half)


def test_bootstrap_is_seeded_and_degenerate_samples_have_no_width():
    rng = np.random.default_rng(5)
    x = rng.random((2, 9, 3))
    assert mean_ci(x, resamples=1000, seed=7) == mean_ci(x, resamples=1000, seed=7)
    assert mean_ci(x, resamples=1000, seed=7) != mean_ci(x, resamples=1000, seed=8)
    flat = mean_ci(np.full((2, 6, 3), 0.8), resamples=1000, seed=0)
    assert flat["mean"] == pytest.approx(0.8) and flat["ci_low"] == pytest.approx(0.8)
    assert flat["ci_high"] == pytest.approx(0.8)
    assert mean_ci(np.full((1, 4, 2), np.nan))["mean"] is None
    assert mean_ci(np.zeros((1, 0, 2)))["ci_low"] is None


# ------------------------------------------------------------------------------------ the learning curve


def test_learning_curve_reads_images_and_wall_time_from_the_run_records(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "unet"}, "train": {"batch_size": 6}}))
    records = [
        {"kind": "train", "iter": 5, "epoch": 0, "time": 2.5},
        {"kind": "train", "iter": 10, "epoch": 0, "time": 5.0},
        {"kind": "val", "iter": 10, "epoch": 0, "mean_dice": 0.4, "mean_hd95": 9.0, "per_class": {}},
        {"kind": "train", "iter": 20, "epoch": 1, "time": 11.0},
        {"kind": "val", "iter": 20, "epoch": 1, "mean_dice": 0.6, "mean_hd95": 7.0, "per_class": {}},
        # the final validation at an iteration with no training record: the run summary's clock
        {"kind": "val", "iter": 23, "epoch": 2, "mean_dice": 0.65, "mean_hd95": 6.0, "per_class": {}},
    ]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"kind": "train", "it'  # a cut last line
    (run / "metrics.jsonl").write_text(text)
    (run / "summary.json").write_text(json.dumps({"iterations": 23, "train_seconds": 12.5}))
    assert learning_curve(run) == [
        {"iter": 10, "images": 60, "seconds": 5.0, "dice": 0.4},
        {"iter": 20, "images": 120, "seconds": 11.0, "dice": 0.6},
        {"iter": 23, "images": 138, "seconds": 12.5, "dice": 0.65},
    ]
    (run / "summary.json").unlink()
    assert learning_curve(run)[-1]["seconds"] is None  # nothing tells: no invented time
    assert learning_curve(tmp_path / "nothing") == []


# ------------------------------------------------------------------------------------ a fraction study


@pytest.fixture(scope="module")
def fraction_study(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fraction")
    data = fraction_phantom(root)
    preset = write_presets(root, max_iterations=4, val_every=1)
    out = root / "out"
    assert main(fraction_argv(data, preset, out)) == 0
    return {"out": out, "data": data, "preset": preset}


def test_fraction_study_draws_both_figures_and_links_them(fraction_study):
    out = fraction_study["out"]
    for name in (FRACTION_FIGURE, LEARNING_FIGURE):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    md = (out / "comparison.md").read_text()
    assert f"]({FRACTION_FIGURE})" in md and f"]({LEARNING_FIGURE})" in md
    figures = json.loads((out / "comparison.json").read_text())["figures"]
    assert FRACTION_FIGURE in figures.values() and LEARNING_FIGURE in figures.values()
    # one figure per question: the fraction has no std-bar sweep figure beside the banded one
    assert not (out / "comparison_sweep_data.train_fraction.png").exists()
    assert all("train_fraction" not in name or name == FRACTION_FIGURE for name in figures.values())


def test_fraction_curve_points_are_the_tables_numbers_inside_their_bands(fraction_study):
    c = json.loads((fraction_study["out"] / "comparison.json").read_text())
    eff = c["efficiency"]
    assert eff["settings"]["resamples"] == 10_000
    recs = eff["fraction"]
    assert len(recs) == 2 * 2 * 2  # networks x fractions x protocols
    for g in c["groups"]:
        frac = g["sweep"]["data.train_fraction"]
        for protocol in ("reference", "corrected"):
            (rec,) = [
                r
                for r in recs
                if r["model"] == g["model"] and r["fraction"] == frac and r["protocol"] == protocol
            ]
            assert rec["mean"] == pytest.approx(g[protocol]["mean_dice"]["mean"], abs=1e-9)
            assert rec["ci_low"] <= rec["mean"] <= rec["ci_high"]
            assert rec["cases"] == 1 and rec["seeds"] == 1 and rec["line"] == g["model"]
    # one test case: every resample is that case, so the band has no width
    assert all(r["ci_low"] == pytest.approx(r["ci_high"]) for r in recs)


def test_learning_curves_hold_every_validation_of_every_run(fraction_study):
    c = json.loads((fraction_study["out"] / "comparison.json").read_text())
    curves = {r["name"]: r for r in c["efficiency"]["learning"]}
    assert sorted(curves) == sorted(r["name"] for r in c["runs"])
    for name, curve in curves.items():
        run = fraction_study["out"] / "runs" / name
        val = [
            json.loads(line)
            for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "val"
        ]
        # 4 iterations: 2 epochs of 2 batches on all the data, 4 epochs of 1 batch on half of it
        assert len(val) == (2 if name.endswith("train_fraction1") else 4), name
        assert [p["iter"] for p in curve["points"]] == [v["iter"] for v in val]
        assert [p["dice"] for p in curve["points"]] == [v["mean_dice"] for v in val]
        assert [p["images"] for p in curve["points"]] == [4 * v["iter"] for v in val]
        assert all(p["seconds"] is not None and p["seconds"] > 0 for p in curve["points"])


def test_no_fraction_figure_without_a_fraction_sweep(fraction_study, tmp_path):
    from organseg.study import collect

    runs = sorted((fraction_study["out"] / "runs").glob("*__train_fraction1"))
    c = collect(tmp_path / "one", runs)
    assert c["efficiency"]["fraction"] == [] and not (tmp_path / "one" / FRACTION_FIGURE).exists()
    assert (tmp_path / "one" / LEARNING_FIGURE).read_bytes()[:8] == PNG_MAGIC


def test_efficiency_records_have_exactly_their_keys(fraction_study):
    keys = Keys()
    check_comparison(keys, json.loads((fraction_study["out"] / "comparison.json").read_text()))
    keys.complete(FractionPoint)
    keys.complete(LearningPoint)
