"""``organseg demo``: the full demo is too slow for a unit test (docs/compare.md gives its measured time and
DSCs), so ``--fast`` runs the same steps on a tiny phantom, once from Python (``organseg.study.run_demo``) and
once more from the command line (which reuses everything); the full demo's configuration is checked here
without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import organseg.precision
import organseg.study.demo as demo
from organseg.cli.main import main
from organseg.data.classes import SYNAPSE_CLASSES
from organseg.formatting import duration
from organseg.models import create_model
from organseg.study import parse_sets, plan_runs, run_demo
from organseg.training.config import model_args


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory) -> tuple[Path, str, dict]:
    """The fast demo called from Python as a notebook would: its folder, what it printed, what it returned."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    capture = tmp_path_factory.mktemp("log") / "stdout.txt"
    import contextlib

    # The CPU every test sees (tests/conftest.py: no bf16 flags), also here, outside any one test: the demo's
    # precision follows it, and a later call in a test must plan the same runs to reuse them.
    with pytest.MonkeyPatch.context() as mp, capture.open("w") as f, contextlib.redirect_stdout(f):
        mp.setattr(organseg.precision, "cpu_info", lambda: ("test CPU without bf16 flags", frozenset()))
        result = run_demo(out, fast=True, device="cpu")
    return out, capture.read_text(), result


def test_run_demo_returns_the_comparison_and_where_its_report_is(fast_demo):
    out, text, result = fast_demo
    assert result["report"] == str(out / "comparison.md") and f"report {result['report']}" in text
    assert result["seconds"] > 0 and f"done in {duration(result['seconds'], 'minutes')}" in text
    written = json.loads((out / "comparison.json").read_text())
    assert [g["label"] for g in result["groups"]] == [g["label"] for g in written["groups"]] != []


def test_fast_demo_runs_every_step_on_synthetic_data(fast_demo):
    out, text, _ = fast_demo
    assert "SYNTHETIC" in (out / "phantom" / "SYNTHETIC.txt").read_text()
    assert (out / "data" / "SYNTHETIC.txt").is_file()  # prepare carries the mark on
    for step in ("[1/3] phantom", "[2/3] prepare synapse", "[3/3] compare"):
        assert step in text
    for model in demo.FAST["models"]:
        run = out / "runs" / f"{model}__seed1234"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["train"]["max_iterations"] == 3 and cfg["train"]["img_size"] == 64
        summary = json.loads((run / "results" / "test_last" / "summary.json").read_text())
        assert summary["cases"] == 1 and summary["split"] == "test"
        assert (run / "report.md").is_file()  # each run's own report
    md = (out / "comparison.md").read_text()
    assert "(SYNTHETIC DATA)" in md and "**Demo settings**" in md and "M parameters (full network" in md
    # The console shows the settings, the paper-format table and where the report is.
    assert "Reduced networks and schedule" in text and "| Swin-Unet (paper) |" in text
    assert f"report {out / 'comparison.md'}" in text and "mean DSC" in text
    # The paired statistics, the verdict and the cost table, in the file and on the console.
    for section in (
        "## Verdict",
        "## Paired: swin_unet − unet, reference protocol",
        "## Paired: swin_unet − unet, corrected protocol",
        "## Cost",
    ):
        assert section in md and section in text
    c = json.loads((out / "comparison.json").read_text())
    assert c["paired"] and len(c["cost"]) == 2 and all(x["params"] for x in c["cost"])


def test_a_second_demo_call_reuses_everything(fast_demo, capsys):
    out, _, _ = fast_demo
    assert main(["demo", "--fast", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "reusing" in text and "0 run(s) trained, 0 tested" in text


def test_full_demo_configuration_is_reduced_and_complete():
    plans = plan_runs(
        demo.DEMO["models"],
        demo.DEMO["seeds"],
        parse_sets(demo.DEMO["sets"]),
        preset=demo.DEMO["preset"],
        kind="synapse",
    )
    assert [p.model for p in plans] == ["unet", "swin_unet"]
    n = len(SYNAPSE_CLASSES)
    for p in plans:
        t = p.config["train"]
        assert t["img_size"] == demo.DEMO["phantom"]["size"]  # the phantom's own matrix: no resampling
        assert t["max_iterations"] > 0 and p.config["val"]["every"] == 0  # no validation split, no cost
        args = model_args(p.config, n)
        small = sum(x.numel() for x in create_model(p.model, **args).parameters())
        full = sum(x.numel() for x in create_model(p.model, num_classes=n).parameters())
        assert full == demo.FULL_PARAMS[p.model]  # what the demo prints without building the full network
        assert small < full / 8, (p.model, small, full)
    lines = demo.settings_lines(plans, n)
    assert len(lines) == 2 and all("iterations" in line and "M parameters" in line for line in lines)
    ph = demo.DEMO["phantom"]
    assert 0 < demo.DEMO["train_cases"] < ph["cases"]


def test_precision_falls_back_to_fp32_without_fast_bf16(monkeypatch):
    monkeypatch.setattr(demo, "fast_bf16", lambda device: None)
    assert demo.demo_precision("cpu", None) == "fp32"
    assert demo.demo_precision("cpu", "bf16") == "bf16"  # an explicit choice wins
    monkeypatch.setattr(demo, "fast_bf16", lambda device: "CPU has avx512_bf16")
    assert demo.demo_precision("cpu", None) is None  # the presets' own choice
