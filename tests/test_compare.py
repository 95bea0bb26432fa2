"""``organseg compare``: the grid, run folders, reuse and resume, aggregation over seeds, ``--collect``.

One tiny study (2 networks x 2 seeds x 2 learning rates, 2 iterations each, on a 32x32 SYNTHETIC phantom) is
run once through the command line; the tests check its files and recompute every aggregate from the runs'
own results.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import PNG_MAGIC, TINY_ARGS, write_presets
from organseg.cli.main import main
from organseg.data.phantom import write_phantom_set
from organseg.data.prepare import prepare_synapse
from organseg.errors import ConfigError, DataError
from organseg.study import (
    Sweep,
    collect,
    infer_sweep_keys,
    parse_seeds,
    parse_sets,
    plan_runs,
    run_name,
    run_state,
    run_study,
    split_values,
)
from organseg.study.aggregate import _relative_changes, _stats
from organseg.study.comparison import Comparison, SkippedRun
from organseg.training import read_metrics, train
from record_keys import PLAIN_STUDY_RECORDS, Keys, check_comparison

# The two networks, tiny (helpers.TINY_ARGS): U-Net at an eighth of its channels (8-16-32-64-64) and a narrow
# Swin-Unet.
MODELS = ["unet", "swin_unet"]
SEEDS = [1, 2]
LRS = ["0.01", "0.05"]


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_set(root / "raw", 3, size=32, num_slices=4, progress=False)
    prepare_synapse(root / "raw", root / "data", train_cases=[1, 2], test_cases=[3], progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def study(tmp_path_factory, phantom_data) -> dict:
    root = tmp_path_factory.mktemp("study")
    preset = write_presets(root)
    out = root / "out"
    argv = [
        "compare",
        "--data",
        str(phantom_data),
        "--models",
        *MODELS,
        "--seeds",
        "1,2",
        "--set",
        f"train.base_lr={','.join(LRS)}",
        "--set",
        "train.momentum=0.9",
        "--preset",
        preset,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-report",
    ]
    assert main(argv) == 0
    return {"out": out, "preset": preset, "data": phantom_data, "argv": argv}


# ------------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("raw", "values"),
    [
        ("0.01,0.05", ["0.01", "0.05"]),
        ("0.01", ["0.01"]),
        ("[1,2,3,4],[2,4,8,16]", ["[1,2,3,4]", "[2,4,8,16]"]),
        ("{a: 1, b: 2},x", ["{a: 1, b: 2}", "x"]),
        ("'a,b',c", ["'a,b'", "c"]),
        (" 1 , 2 ", ["1", "2"]),
    ],
)
def test_split_values_keeps_brackets_and_quotes_whole(raw, values):
    assert split_values(raw) == values


def test_parse_sets_separates_fixed_and_swept():
    s = parse_sets(["train.base_lr=0.01,0.05", "train.momentum=0.8", "model.args.num_heads=[1,2],[2,4]"])
    assert s.fixed == ("train.momentum=0.8",)
    assert s.swept == (("train.base_lr", ("0.01", "0.05")), ("model.args.num_heads", ("[1,2]", "[2,4]")))
    assert s.keys == ["train.base_lr", "model.args.num_heads"]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["train.base_lr"], "expected key=value"),
        (["train.base_lr=0.01,"], "empty value"),
        (["train.base_lr=0.01,0.010"], "repeated"),
        (["train.base_lr=0.01", "train.base_lr=0.05"], "set twice"),
        (["train.seed=1,2"], "--seeds"),
        (["model.name=unet"], "--models"),
    ],
)
def test_parse_sets_rejects_bad_items(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_sets(items)


def test_parse_seeds():
    assert parse_seeds(None) == [1234]
    assert parse_seeds(["1234,1", "2"]) == [1234, 1, 2]
    with pytest.raises(ConfigError, match="--seeds: expected an integer in \\[0, .*got 'x'"):
        parse_seeds(["1,x"])
    with pytest.raises(ConfigError, match="--seeds: expected an integer in \\[0, .*got '-1'"):
        parse_seeds(["-1"])
    assert parse_seeds(["1e3"]) == [1000]
    with pytest.raises(ConfigError, match="repeated"):
        parse_seeds(["1,1"])


def test_run_names_are_stable_and_readable():
    assert run_name("swin_unet", 1234, [("train.base_lr", "0.05")]) == "swin_unet__seed1234__base_lr0.05"
    assert run_name("unet", 1) == "unet__seed1"
    # Keys that end alike keep their whole (dotted) name; odd characters become dashes.
    name = run_name("unet", 1, [("train.x", "1"), ("val.x", "[1, 2]")])
    assert name == "unet__seed1__train-x1__val-x1-2"


def test_plan_expands_the_grid_with_resolved_configs(tmp_path):
    preset = write_presets(tmp_path)
    plans = plan_runs(
        MODELS,
        [1, 2],
        parse_sets(["train.base_lr=0.01,0.05", "train.momentum=0.8"]),
        preset=preset,
        precision="bf16",
    )
    assert len(plans) == 8 and len({p.name for p in plans}) == 8
    assert plans[0].name == "unet__seed1__base_lr0.01" and plans[-1].name == "swin_unet__seed2__base_lr0.05"
    for p in plans:
        t = p.config["train"]
        assert t["seed"] == p.seed and t["momentum"] == 0.8 and t["precision"] == "bf16"
        assert t["base_lr"] == float(dict(p.sweep)["train.base_lr"])
        assert p.config["model"]["name"] == p.model and p.config["model"]["args"] == TINY_ARGS[p.model]
    with pytest.raises(ConfigError, match="unknown network"):
        plan_runs(["nope"], [1], Sweep(), preset=preset)
    with pytest.raises(ConfigError, match="unknown preset"):
        plan_runs(["unet"], [1], Sweep(), preset="no_such_{model}")


def test_one_preset_for_every_network(tmp_path):
    plans = plan_runs(["unet", "swin_unet"], [1], Sweep(), preset="unet_synapse")  # no {model}: shared
    assert [(p.model, p.config["train"]["batch_size"]) for p in plans] == [("unet", 16), ("swin_unet", 16)]
    one = tmp_path / "unet_only.yaml"
    one.write_text(yaml.safe_dump({"model": {"name": "unet", "args": {"width": 0.5}}}))
    with pytest.raises(ConfigError, match="sets model.args for 'unet', not 'swin_unet'"):
        plan_runs(["unet", "swin_unet"], [1], Sweep(), preset=str(one))


def test_default_preset_follows_the_dataset():
    plans = plan_runs(["unet", "swin_unet"], [1234], Sweep(), kind="acdc")
    assert [p.config["train"]["batch_size"] for p in plans] == [16, 24]  # unet_acdc, swin_unet_acdc
    plans = plan_runs(["unet"], [1234], Sweep(), kind=None)  # own data: the Synapse recipe
    assert plans[0].config["val"]["every"] == 10
    # a network with only a fast recipe is not mixed with the others' reference recipes: the error says how
    with pytest.raises(ConfigError, match=r'nnunet_2d_acdc_fast; .*--preset "\{model\}_acdc_fast"'):
        plan_runs(["unet", "nnunet_2d"], [1234], Sweep(), kind="acdc")


def test_stats_mean_and_sample_std():
    s = _stats([0.5, 0.7, None, float("nan")])
    assert (
        s["n"] == 2
        and s["mean"] == pytest.approx(0.6)
        and s["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    )
    assert _stats([0.3]) == {"mean": 0.3, "std": None, "n": 1}
    assert _stats([None]) == {"mean": None, "std": None, "n": 0}


def test_relative_hd95_change_is_against_the_baseline_at_the_same_sweep_values():
    def group(model, lr, hd, dice):
        stat = {"mean_hd95": {"mean": hd}, "mean_dice": {"mean": dice}}
        return {"model": model, "sweep": {"train.base_lr": lr}, "reference": stat, "corrected": stat}

    groups = [
        group("unet", 0.01, 40.0, 0.70),
        group("unet", 0.05, 20.0, 0.75),
        group("swin_unet", 0.01, 34.4, 0.72),
        group("swin_unet", 0.05, 25.0, 0.74),
    ]
    rel = _relative_changes(groups, "unet")
    assert [r["sweep"]["train.base_lr"] for r in rel] == [0.01, 0.05]
    assert rel[0]["reference"]["hd95_change"] == pytest.approx(-0.14)  # the seed write-up's "-14 %"
    assert rel[1]["reference"]["hd95_change"] == pytest.approx(0.25)
    assert rel[0]["reference"]["dice_points"] == pytest.approx(2.0)


def test_the_seed_write_ups_hd95_change_is_quoted_only_beside_swin_unet_against_unet():
    from organseg.study.outputs import _relative

    def comparison(model, baseline):
        change = {"hd95_change": -0.2, "dice_points": 1.0}
        row = {"model": model, "baseline": baseline, "sweep": {}, "reference": change, "corrected": change}
        published = {"relative_hd95": {model: -0.457 if model == "swin_unet" else 0.84}}
        return {"relative": [row], "baseline": baseline, "models": [baseline, model], "published": published}

    assert "write-up measured −14% (Swin-Unet against U-Net)" in "\n".join(
        _relative(comparison("swin_unet", "unet"))
    )
    other = "\n".join(_relative(comparison("unet", "swin_unet")))
    assert "Published (Swin-Unet paper): unet +84.0%." in other and "14%" not in other


def test_infer_sweep_keys_ignores_seeds_models_and_runtime_keys():
    def cfg(model, seed, lr, device, batch):
        return {
            "model": {"name": model, "args": {}},
            "train": {"seed": seed, "base_lr": lr, "device": device, "batch_size": batch},
        }

    configs = [
        ("unet", cfg("unet", 1, 0.01, "cpu", 16)),
        ("unet", cfg("unet", 2, 0.05, "cuda", 16)),
        ("swin_unet", cfg("swin_unet", 1, 0.01, "cpu", 24)),
    ]
    # batch_size differs between the networks (their presets), not within one: not a sweep.
    assert infer_sweep_keys(configs) == ["train.base_lr"]


def test_the_horizons_runs_fitted_to_one_time_budget_are_no_sweep():
    # Folds of one time budget fit a few iterations apart (train writes train.fitted_iterations): one group.
    def cfg(fold, fitted):
        train = {"seed": 1, "time_budget_min": 10.0, "fitted_iterations": fitted}
        return {"model": {"name": "unet", "args": {}}, "data": {"fold": fold}, "train": train}

    assert infer_sweep_keys([("unet", cfg(0, 286)), ("unet", cfg(1, 279)), ("unet", cfg(2, 285))]) == []


# ----------------------------------------------------------------------------------------------- the study


def test_study_writes_every_run_and_the_comparison_files(study):
    out = study["out"]
    names = sorted(p.name for p in (out / "runs").iterdir())
    expected = sorted(run_name(m, s, [("train.base_lr", lr)]) for m in MODELS for s in SEEDS for lr in LRS)
    assert names == expected
    for name in names:
        run = out / "runs" / name
        assert (run / "checkpoints" / "last.pt").is_file()
        summary = json.loads((run / "results" / "test_last" / "summary.json").read_text())
        assert summary["cases"] == 1 and summary["reference"]["mean_dice"] is not None
        assert not (run / "report.md").exists()  # --no-report
    for f in ("comparison.md", "comparison.json", "comparison.csv"):
        assert (out / f).stat().st_size > 0
    for png in ("comparison_organs.png", "comparison_sweep_train.base_lr.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    md = (out / "comparison.md").read_text()
    assert "SYNTHETIC DATA" in md and "| Swin-Unet (paper) | | 79.13 | 21.55 |" in md
    assert "## Sweep: train.base_lr" in md and "## Swin-Unet against U-Net" in md
    assert "Published (Swin-Unet paper): swin_unet -45.7%" in md
    assert "![per-organ DSC and HD95](comparison_organs.png)" in md


def test_aggregates_are_mean_and_std_over_seeds_of_the_run_results(study):
    out = study["out"]
    c = json.loads((out / "comparison.json").read_text())
    assert c["sweep_keys"] == ["train.base_lr"] and c["models"] == MODELS and c["dataset"]["synthetic"]
    assert c["dataset"]["columns"][:2] == ["Aorta", "Gallbladder"]  # the papers' column order
    assert len(c["groups"]) == 4 and all(g["n"] == 2 and g["seeds"] == SEEDS for g in c["groups"])
    for g in c["groups"]:
        lr = g["sweep"]["train.base_lr"]
        summaries = [
            json.loads(
                (
                    out
                    / "runs"
                    / run_name(g["model"], s, [("train.base_lr", f"{lr:g}")])
                    / "results"
                    / "test_last"
                    / "summary.json"
                ).read_text()
            )
            for s in SEEDS
        ]
        for protocol in ("reference", "corrected"):
            dice = [s[protocol]["mean_dice"] for s in summaries]
            hd = [s[protocol]["mean_hd95"] for s in summaries]
            got = g[protocol]
            if all(v is not None for v in dice):
                assert got["mean_dice"]["mean"] == pytest.approx(np.mean(dice))
                assert got["mean_dice"]["std"] == pytest.approx(np.std(dice, ddof=1))
            if all(v is not None for v in hd):
                assert got["mean_hd95"]["mean"] == pytest.approx(np.mean(hd))
            liver = [s[protocol]["per_class"]["liver"]["dice"] for s in summaries]
            if all(v is not None for v in liver):
                assert got["columns"]["Liver"]["dice"]["mean"] == pytest.approx(np.mean(liver))
    # The relative HD95 change is the one of the group means.
    for rel in c["relative"]:
        g = next(x for x in c["groups"] if x["model"] == rel["model"] and x["sweep"] == rel["sweep"])
        b = next(x for x in c["groups"] if x["model"] == rel["baseline"] and x["sweep"] == rel["sweep"])
        hd, hd0 = g["reference"]["mean_hd95"]["mean"], b["reference"]["mean_hd95"]["mean"]
        if hd0:
            assert rel["reference"]["hd95_change"] == pytest.approx((hd - hd0) / hd0)
    # Published: Swin-Unet paper Table 1, (21.55 - 39.70) / 39.70.
    assert c["published"]["relative_hd95"] == {"swin_unet": pytest.approx((21.55 - 39.70) / 39.70)}


def test_csv_holds_the_json_numbers(study):
    out = study["out"]
    c = json.loads((out / "comparison.json").read_text())
    all_rows = list(csv.DictReader((out / "comparison.csv").open()))
    rows = [r for r in all_rows if r["kind"] == "summary"]
    assert len(rows) == len(c["groups"]) * 2 * (1 + len(c["dataset"]["columns"]))
    assert list(rows[0])[:4] == ["model", "train.base_lr", "protocol", "column"]
    # then one row per paired record, with the JSON's numbers
    paired = [r for r in all_rows if r["kind"] == "paired"]
    assert len(paired) == len(c["paired"]) == 2 * 2 * 2 * (1 + len(c["dataset"]["columns"]))
    for row, rec in zip(paired, c["paired"], strict=True):
        assert (row["model"], row["baseline"], row["metric"], row["column"]) == (
            rec["model_b"],
            rec["model_a"],
            rec["metric"],
            rec["organ"],
        )
        for k in ("diff", "ci_low", "ci_high", "p", "p_holm"):
            assert (row[k] == "") if rec[k] is None else float(row[k]) == pytest.approx(rec[k])
    g = c["groups"][0]
    row = next(
        r
        for r in rows
        if r["model"] == g["model"]
        and r["train.base_lr"] == "0.01"
        and r["protocol"] == "reference"
        and r["column"] == "mean"
    )
    assert float(row["dice_mean"]) == pytest.approx(g["reference"]["mean_dice"]["mean"])
    assert int(row["n"]) == 2 and row["seeds"] == "1 2"


def test_second_call_reuses_finished_runs_and_results(study, capsys):
    out = study["out"]
    ckpts = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoints/last.pt")}
    results = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results/test_last/summary.json")}
    before = json.loads((out / "comparison.json").read_text())
    assert main(study["argv"]) == 0
    text = capsys.readouterr().out
    assert (
        text.count("training complete (2 iterations), reused") == 8 and "0 run(s) trained, 0 tested" in text
    )
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts
    assert {p: p.stat().st_mtime_ns for p in results} == results
    after = json.loads((out / "comparison.json").read_text())
    assert after["groups"] == before["groups"]


def test_a_partial_run_is_resumed_and_a_changed_recipe_refused(study, tmp_path):
    out = tmp_path / "out"
    sets = parse_sets(["train.base_lr=0.01"])
    (plan,) = plan_runs(["unet"], [1], sets, preset=study["preset"], data_root=study["data"])
    # A run stopped by its time budget after the first iteration (the budget is a runtime key).
    partial = {**plan.config, "train": {**plan.config["train"], "time_budget_min": 1e-9}}
    train(partial, study["data"], out / "runs" / plan.name)
    assert run_state(out / "runs" / plan.name, plan.config) == ("partial", 1)
    result = run_study(
        study["data"],
        ["unet"],
        out,
        seeds=[1],
        sets=sets,
        preset=study["preset"],
        device="cpu",
        report=False,
        progress=False,
    )
    assert result["trained"] == [plan.name] and result["tested"] == [plan.name]
    assert [r["iter"] for r in read_metrics(out / "runs" / plan.name, "train")] == [1, 2]
    with pytest.raises(ConfigError, match=r"another configuration \(train.momentum: 0.9 -> 0.5\)"):
        run_study(
            study["data"],
            ["unet"],
            out,
            seeds=[1],
            sets=["train.base_lr=0.01", "train.momentum=0.5"],
            preset=study["preset"],
            device="cpu",
            report=False,
            progress=False,
        )


# ----------------------------------------------------------------------------------------------- --collect


def test_collect_matches_the_study_and_reads_given_run_folders(study, tmp_path, capsys):
    out = study["out"]
    before = json.loads((out / "comparison.json").read_text())
    # Runs trained elsewhere (one per machine) and copied into another study folder.
    other = tmp_path / "collected"
    for p in (out / "runs").iterdir():
        shutil.copytree(p, other / "runs" / p.name)
    assert main(["compare", "--collect", "--out", str(other)]) == 0
    assert "| swin_unet, base_lr=0.05 | 2 |" in capsys.readouterr().out
    got = json.loads((other / "comparison.json").read_text())
    assert got["sweep_keys"] == ["train.base_lr"]  # read back from the run configurations
    assert got["groups"] == before["groups"] and got["relative"] == before["relative"]
    # --models picks and orders the networks.
    assert main(["compare", "--collect", "--out", str(other), "--models", "swin_unet"]) == 0
    got = json.loads((other / "comparison.json").read_text())
    assert [g["model"] for g in got["groups"]] == ["swin_unet"] * 2 and got["relative"] == []

    # Only the seed-1 runs, given by path: one seed per group, so no standard deviation.
    seed1 = sorted(str(p) for p in (other / "runs").glob("*__seed1__*"))
    c = collect(tmp_path / "seed1", seed1)
    assert all(g["n"] == 1 and g["reference"]["mean_dice"]["std"] is None for g in c["groups"])
    md = (tmp_path / "seed1" / "comparison.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("| swin_unet, base_lr=0.05 | 1 |")]
    assert rows and not any("±" in r for r in rows)


def test_collect_skips_untested_runs_and_names_the_command(study, tmp_path, capsys):
    other = tmp_path / "partial"
    for p in (study["out"] / "runs").glob("unet__*"):
        shutil.copytree(p, other / "runs" / p.name)
    untested = other / "runs" / "unet__seed2__base_lr0.05"
    shutil.rmtree(untested / "results")
    c = collect(other)
    assert len(c["runs"]) == 3 and c["skipped"][0]["run_dir"] == str(untested)
    assert f"organseg test {untested} --checkpoint last" in capsys.readouterr().out
    g = next(g for g in c["groups"] if g["sweep"]["train.base_lr"] == 0.05)
    assert g["n"] == 1 and g["seeds"] == [1]
    assert math.isfinite(g["reference"]["mean_dice"]["mean"])


def test_collect_errors_are_one_line(study, tmp_path, capsys):
    def one_line(argv, *needles):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("organseg compare: error:"), err
        for n in needles:
            assert n in err, err

    one_line(["compare", "--collect", "--out", str(tmp_path / "empty")], "no run folders")
    one_line(["compare", "--collect", "--out", str(tmp_path), "--data", "x"], "--data")
    one_line(["compare", "--out", str(tmp_path)], "--data and --models")
    one_line(["compare", "--collect", str(tmp_path), "--out", str(tmp_path)], "not a run folder")
    bad = tmp_path / "bad" / "runs" / "r"
    bad.mkdir(parents=True)
    (bad / "config.yaml").write_text("model: [unclosed")
    one_line(["compare", "--collect", "--out", str(tmp_path / "bad")], "config.yaml", "cannot read")
    run = study["out"] / "runs" / "unet__seed1__base_lr0.01"
    odd = tmp_path / "odd" / "runs" / "odd"
    shutil.copytree(run, odd)
    summary = odd / "results" / "test_last" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "class_names": ["background", "x"]}))
    with pytest.raises(DataError, match="different datasets"):
        collect(tmp_path / "odd", [run, odd])


def test_parallel_jobs_train_the_same_runs_as_one_process(study, tmp_path):
    """--jobs 2 trains each run in its own `organseg train` process: same names, same weights."""
    import torch

    out = tmp_path / "parallel"
    result = run_study(
        study["data"],
        ["unet"],
        out,
        seeds=[1, 2],
        sets=["train.base_lr=0.01"],
        jobs=2,
        preset=study["preset"],
        device="cpu",
        report=False,
        progress=False,
    )
    names = ["unet__seed1", "unet__seed2"]  # one learning rate: not swept, so not in the name
    assert result["trained"] == names and result["tested"] == names
    for name in names:
        assert (out / "runs" / name / "train.log").is_file()
        mine = torch.load(out / "runs" / name / "checkpoints" / "last.pt", weights_only=True)["model"]
        same = study["out"] / "runs" / f"{name}__base_lr0.01" / "checkpoints" / "last.pt"
        ref = torch.load(same, weights_only=True)["model"]
        assert mine.keys() == ref.keys() and all(torch.equal(mine[k], ref[k]) for k in ref)
    assert (
        result["groups"][0]["reference"]
        == json.loads((study["out"] / "comparison.json").read_text())["groups"][0]["reference"]
    )


def test_a_failing_parallel_run_is_one_clear_error(study, tmp_path, capsys):
    out = tmp_path / "broken"
    argv = [
        "compare",
        "--data",
        str(study["data"]),
        "--models",
        "unet",
        "swin_unet",
        "--out",
        str(out),
        "--preset",
        study["preset"],
        "--set",
        "model.args.in_chans=0",
        "--jobs",
        "2",
    ]
    # Every up-front check passes (in_chans is a U-Net argument of the right type); the U-Net child then
    # fails when it builds the network (no input channels).
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("organseg compare: error:") and "training failed (exit code" in err, err
    assert "unet" in err and "train.log" in err, err


# ------------------------------------------------------------------------------ paired statistics and cost


def test_paired_records_are_recomputed_from_the_runs_per_case_files(study):
    from organseg.study.paired import paired_difference

    out = study["out"]
    c = json.loads((out / "comparison.json").read_text())
    assert c["paired_settings"]["resamples"] >= 10_000 and c["paired_settings"]["cases"] == 1
    keys = {"a", "b", "diff", "ci_low", "ci_high", "p", "p_holm", "wins", "losses"}
    assert all(keys <= set(r) for r in c["paired"])
    assert {(r["protocol"], r["metric"]) for r in c["paired"]} == {
        (p, m) for p in ("reference", "corrected") for m in ("dice", "hd95")
    }
    assert {(r["model_a"], r["model_b"]) for r in c["paired"]} == {("unet", "swin_unet")}
    assert all(
        r["resampled"] == "subjects and seeds" and r["seeds_a"] == r["seeds_b"] == 2 for r in c["paired"]
    )
    counted = {(r["unit_of_analysis"], r["n_subjects"], r["n_volumes"]) for r in c["paired"] if r["n"]}
    assert counted == {("subject", 1, 1)}  # the phantom's one test case is one subject
    for lr in LRS:

        def values(model: str, lr: str = lr) -> np.ndarray:
            out_ = []
            for s in SEEDS:
                res = out / "runs" / run_name(model, s, [("train.base_lr", lr)]) / "results" / "test_last"
                case = json.loads((res / "per_case.json").read_text())[0]
                out_.append([case["classes"]["liver"]["reference"]["dice"]])
            return np.array(out_)

        rec = next(
            r
            for r in c["paired"]
            if r["sweep"]["train.base_lr"] == float(lr)
            and (r["protocol"], r["metric"], r["organ"]) == ("reference", "dice", "Liver")
        )
        expected = paired_difference(values("unet"), values("swin_unet"))
        for k in ("a", "b", "diff", "ci_low", "ci_high", "p", "wins", "losses"):
            assert rec[k] == (pytest.approx(expected[k]) if expected[k] is not None else None), k
    md = (out / "comparison.md").read_text()
    assert md.index("## Verdict") < md.index("## Reference protocol")
    assert "## Paired: swin_unet − unet, corrected protocol (train.base_lr=0.01)" in md
    assert "none of the differences is significant" in md  # one test case: nothing can be


def test_cost_records_come_from_the_runs_own_records(study):
    from organseg.models import create_model
    from organseg.models.flops import count_parameters

    out = study["out"]
    c = json.loads((out / "comparison.json").read_text())
    assert [(x["model"], x["sweep"]) for x in c["cost"]] == [(g["model"], g["sweep"]) for g in c["groups"]]
    for cost, g in zip(c["cost"], c["groups"], strict=True):
        args = {**TINY_ARGS[g["model"]], "num_classes": 9}
        if g["model"] == "swin_unet":
            args["img_size"] = 32
        assert cost["params"] == count_parameters(create_model(g["model"], **args))
        assert cost["gflops_per_image"] > 0 and cost["img_size"] == 32
        trains = [json.loads((out / "runs" / n / "summary.json").read_text()) for n in g["runs"]]
        assert cost["train_images_per_s"] == pytest.approx(np.mean([t["images_per_second"] for t in trains]))
        assert cost["train_seconds_total"] == pytest.approx(sum(t["train_seconds"] for t in trains))
        assert cost["peak_memory_mb"] == max(t["peak_memory_mb"] for t in trains) > 0
        tests = [
            json.loads((out / "runs" / n / "results" / "test_last" / "summary.json").read_text())
            for n in g["runs"]
        ]
        assert cost["infer_seconds_per_slice"] == pytest.approx(
            np.mean([t["inference_seconds"] / t["slices"] for t in tests])
        )
        assert cost["train_device"].startswith("cpu") and cost["test_device"] == "cpu"
    md = (out / "comparison.md").read_text()
    assert "## Cost" in md and "| swin_unet, base_lr=0.05 |" in md.split("## Cost")[1]


def test_cost_cells_are_empty_only_for_a_network_this_organseg_cannot_build(monkeypatch):
    """A run of a network (or arguments) the registry refuses leaves its cost cells empty; a fault while
    counting (here a TypeError) is not hidden as empty cells."""
    from organseg.study import cost

    monkeypatch.setattr(cost, "_PROFILE_CACHE", {})
    cfg = {"model": {"name": "unet", "args": {"width": 0.125}}, "train": {"img_size": 32}}
    assert cost._profile(cfg, 3)["params"] > 0
    assert cost._profile({**cfg, "model": {"name": "vnet", "args": {}}}, 3) is None  # not registered here
    assert cost._profile({**cfg, "model": {"name": "unet", "args": {"depth": 3}}}, 3) is None  # no such arg
    assert cost._profile({**cfg, "model": {"name": "unet", "args": {"width": 9.0}}}, 3) is None  # refused
    assert cost._profile({"model": cfg["model"], "train": {}}, 3) is None  # no input size recorded

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(cost, "_PROFILE_CACHE", {})
    monkeypatch.setattr(cost, "model_profile", broken)
    for _ in range(2):  # nor cached as an empty record
        with pytest.raises(TypeError, match="a bug"):
            cost._profile(cfg, 3)


def test_the_runs_table_writes_zero_iterations_as_zero_and_only_none_as_missing():
    from organseg.study.outputs import _runs

    ref = {"mean_dice": 0.5, "mean_hd95": 3.0}
    run = {"name": "unet__seed1", "model": "unet", "seed": 1, "reference": ref}
    rows = _runs(
        {
            "runs": [
                {**run, "iterations": 0, "train_seconds": 0.0},
                {**run, "iterations": None, "train_seconds": None},
            ],
            "skipped": [],
        }
    )
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in rows if line.startswith("| `")]
    assert [c[3:5] for c in cells] == [["0", "0.0"], ["–", "–"]]


def test_comparison_json_has_exactly_its_records_keys(study, tmp_path):
    keys = Keys()
    check_comparison(keys, json.loads((study["out"] / "comparison.json").read_text()))
    other = tmp_path / "partial"  # an untested run: a skipped record
    for p in (study["out"] / "runs").glob("unet__seed1__*"):
        shutil.copytree(p, other / "runs" / p.name)
    shutil.rmtree(next((other / "runs").iterdir()) / "results")
    collect(other)
    check_comparison(keys, json.loads((other / "comparison.json").read_text()))
    keys.complete(Comparison, but=("folds", "cross_validation"))  # tests/test_crossval.py: a cv study
    for record in (*PLAIN_STUDY_RECORDS, SkippedRun):
        keys.complete(record)


def test_checkpoint_best_without_validation_cases_is_refused_before_any_run(phantom_data, tmp_path):
    # The phantom set has no validation cases: training writes no best.pt, found before the first run trains.
    out = tmp_path / "out"
    with pytest.raises(
        ConfigError, match=r"--checkpoint best: .*data has no validation cases, so training writes"
    ):
        run_study(phantom_data, ["unet"], out, checkpoint="best", device="cpu", report=False, progress=False)
    assert not out.exists()


# ------------------------------------------------------------------------------- a study stopped by a signal


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_sigterm_stops_a_parallel_study_and_its_children_and_a_rerun_resumes(phantom_data, tmp_path):
    """SIGTERM to `compare --jobs 2` (kill, scancel) stops its two child trainings, says so in one line
    (exit 143), and the same command resumes both runs from their last.pt."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from organseg.locks import LOCK_FILE, read_holder

    preset = write_presets(tmp_path, max_iterations=150)  # long enough to be stopped in the middle
    out = tmp_path / "out"
    argv = ["compare", "--data", str(phantom_data), "--models", "unet", "--seeds", "1,2", "--preset", preset]
    argv += ["--out", str(out), "--device", "cpu", "--no-report", "--jobs", "2"]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "organseg", *argv]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runs = [out / "runs" / name for name in ("unet__seed1", "unet__seed2")]
    try:
        # Both children train and have a checkpoint to resume from; their pids are in their locks.
        deadline = time.monotonic() + 120
        while not all((r / "checkpoints" / "last.pt").is_file() and (r / LOCK_FILE).is_file() for r in runs):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the child trainings did not start"
            time.sleep(0.2)
        children = [read_holder(r).pid for r in runs]
        assert all(_alive(pid) for pid in children) and proc.pid not in children
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last == "organseg compare: stopped by SIGTERM: 2 run(s) stopped, re-run the same command to resume"
    assert "Traceback" not in err
    assert not [pid for pid in children if _alive(pid)]  # stopped (and reaped) before the compare ended
    stopped_at = [torch.load(r / "checkpoints" / "last.pt", weights_only=True)["iteration"] for r in runs]
    assert all(0 < it < 150 for it in stopped_at), stopped_at

    assert main(argv) == 0  # the same command: both runs resume from their last.pt and finish
    for r in runs:
        assert torch.load(r / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 150
        assert "resuming at iteration" in (r / "train.log").read_text()
        assert (r / "results" / "test_last" / "summary.json").is_file() and not (r / LOCK_FILE).exists()
