"""The benchmark scripts start, and their shared child-process helper passes results and failures through.
Nothing here times anything (the scripts' measurements are only meaningful on a quiet machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
from _common import run_child  # noqa: E402


@pytest.mark.parametrize(
    "script",
    [
        "bench_data.py",
        "bench_eval.py",
        "bench_models.py",
        "bench_onnx.py",
        "bench_train.py",
        "profile_step.py",
        "time_to_accuracy.py",
        "pretrain_gain.py",
    ],
)
def test_benchmark_script_starts(script):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")


def test_run_child_returns_the_last_json_line_and_reports_failures(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(
        "import json, sys\n"
        "spec = json.loads(sys.argv[-1])\n"
        "print('noise before the result')\n"
        "if spec.get('fail'):\n"
        "    sys.exit('child: it went wrong')\n"
        "print(json.dumps({'twice': 2 * spec['n'], 'argv': sys.argv[1:-2]}))\n"
    )
    assert run_child(child, "--_one", {"n": 21}, argv=["--x", "1"]) == {"twice": 42, "argv": ["--x", "1"]}
    assert run_child(child, "--_one", {"fail": True}) == {"error": "child: it went wrong"}
    with pytest.raises(SystemExit, match="bench: case failed"):
        run_child(child, "--_one", {"fail": True}, failed="bench: case failed")


def test_time_to_accuracy_report_reads_a_run_folder(tmp_path, capsys):
    import json

    import time_to_accuracy as tta
    from helpers import tiny_config, tiny_dataset
    from organseg.training import train

    run = tmp_path / "T9_tiny"
    recipe = {"optimizer": "adamw", "base_lr": 1e-3, "schedule": "cosine", "max_iterations": 6}
    cfg = tiny_config(train=recipe)
    summary = train(cfg, tiny_dataset(12), run)
    args = type("A", (), {"runs": [str(run)], "figure": str(tmp_path / "f.png"), "series": ["T9=tiny"]})
    assert tta.report(args) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| T9_tiny")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "tiny_train_test_net" and cells[2].startswith("adamw lr 0.001")
    assert cells[6] == "6" and cells[9] == f"{100 * summary['last_val']['mean_dice']:.1f}"
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert json.loads((run / "summary.json").read_text())["iterations"] == 6


def test_epochs_to_reach_finds_the_first_fast_validation_at_the_reference_target():
    import time_to_accuracy as tta

    reference = [(50, 0.60), (100, 0.80), (150, 0.85)]
    r = tta.epochs_to_reach(reference, [(10, 0.70), (20, 0.86), (30, 0.84), (50, 0.90)])
    assert (r["target"], r["reached_at"], r["fast_best"], r["fast_epochs"]) == (0.85, 20, 0.90, 50)
    assert r["ratio"] == pytest.approx(20 / 150)
    never = tta.epochs_to_reach(reference, [(10, 0.70), (50, 0.84)])
    assert never["reached_at"] is None and never["ratio"] is None
    with pytest.raises(SystemExit, match="validation records"):
        tta.epochs_to_reach(reference, [])


@pytest.mark.parametrize("script", ["_gpu_setup.sh", "gpu_check.sh", "gpu_time_to_accuracy.sh"])
def test_gpu_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(BENCH / script)]).returncode == 0
