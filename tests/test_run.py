"""``organseg.run``: the run folder's one reader of each file, ``organseg.formatting``'s one rule for missing
numbers, and a diverged training recognised by its exit code (not by its message)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

import organseg.training
from helpers import PNG_MAGIC
from organseg.cli.main import main
from organseg.errors import DataError, OrgansegError
from organseg.formatting import MISSING, duration, fmt_value, num, plot_value, pm, save_figure, signed_pct
from organseg.run import EXIT_DIVERGED, TRAIN_FILES, ResultsDir, RunDir, read_test_summary
from organseg.training import TrainingDiverged
from organseg.training.runlog import RunLog, read_metrics


def _records(n: int) -> list[dict]:
    return [{"kind": "train", "iter": i, "loss": 1.0 / i} for i in range(1, n + 1)]


def _write_log(run: RunDir, records: list[dict], tail: str = "") -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    run.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


def test_names_and_paths_come_from_one_place(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.config_file.name == "config.yaml" and run.env_file.name == "env.json"
    assert run.checkpoint("best") == run.checkpoint("best.pt") == tmp_path / "r" / "checkpoints" / "best.pt"
    assert run.results("test", "last").path == tmp_path / "r" / "results" / "test_last"
    assert set(TRAIN_FILES) == {
        "config.yaml",
        "env.json",
        "summary.json",
        "metrics.jsonl",
        "checkpoints",
        "tensorboard",
    }


def test_metrics_ignores_a_cut_last_line_only(tmp_path):
    run = RunDir(tmp_path / "r")
    val = {"kind": "val", "iter": 3, "mean_dice": 0.5}
    _write_log(run, [*_records(3), val], tail='{"kind": "train", "it')
    assert [r["iter"] for r in run.metrics("train")] == [1, 2, 3]
    assert [r["kind"] for r in run.metrics()] == ["train", "train", "train", "val"]
    assert read_metrics(run.path, "val") == [val]
    # A damaged line that is not the last one is damage, named by its line.
    text = run.metrics_file.read_text(encoding="utf-8").replace('{"kind": "train", "iter": 2', '{"kind": ', 1)
    run.metrics_file.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: not a JSON record"):
        run.metrics()


def test_last_iteration_reads_the_tail_only(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.last_iteration() == 0  # no log yet
    _write_log(run, _records(500), tail='{"kind": "train", "iter": 501, "lo')
    # The tail starts mid-line and ends in a cut line: both are skipped, the last whole record counts.
    assert run.last_iteration(tail_bytes=200) == 500
    assert run.last_iteration() == 500


def test_resumed_log_is_cut_back_to_the_checkpoint(tmp_path):
    run = RunDir(tmp_path / "r")
    _write_log(run, _records(6), tail='{"kind": "tr')
    log = RunLog(run.path, resume_iteration=4)
    log.write({"kind": "train", "iter": 5, "loss": 0.1})
    log.close()
    assert [r["iter"] for r in run.metrics()] == [1, 2, 3, 4, 5]
    assert run.metrics_file.read_text(encoding="utf-8").endswith("\n")


def test_summaries_are_typed_and_missing_ones_are_none(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.summary() is None and run.env() is None
    run.path.mkdir()
    run.write_summary({"stopped": "completed", "iterations": 9, "train_seconds": 1.5, "extra": 1})
    run.write_env({"device": "cpu", "torch_threads": 2})
    s, env = run.summary(), run.env()
    assert (s.stopped, s.iterations, s.train_seconds, s.peak_memory_mb) == ("completed", 9, 1.5, None)
    assert s.raw["extra"] == 1
    assert (env.device, env.torch_threads, env.world_size) == ("cpu", 2, None)
    run.summary_file.write_text("{not json", encoding="utf-8")
    assert run.summary() is None  # a damaged record is treated as absent (the cost table leaves cells empty)


def test_config_and_test_summary_errors_name_the_file(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.write_config("train: {seed: 1}\n")
    with pytest.raises(DataError, match=r"config\.yaml: not a run configuration \(no model section\)"):
        _ = run.config
    assert run.model_name is None
    res = run.results("test", "last")
    res.path.mkdir(parents=True)
    res.summary_file.write_text(json.dumps({"class_names": ["bg", "a"], "reference": {}}), encoding="utf-8")
    with pytest.raises(DataError, match=r"summary\.json: not an organseg test summary \(no split, cases"):
        read_test_summary(res.summary_file)
    assert run.all_results() == [ResultsDir(res.path)]


# ---------------------------------------------------------------------------------------------- formatting


@pytest.mark.parametrize("missing", [None, math.nan])
def test_missing_numbers_read_the_same_everywhere(missing):
    assert num(missing) == pm({"mean": missing, "std": 0.1}) == signed_pct(missing) == MISSING == "–"
    assert math.isnan(plot_value(missing, 100))
    assert pm({"mean": 0.5, "std": missing}, 100) == "50.00"  # one seed: no spread


def test_numbers_keep_their_formats():
    assert num(0.81234, scale=100) == "81.23" and num(24_898_953, ",") == "24,898,953"
    assert num(-1.5, "+.2f") == "-1.50" and num(0.0441, ".3g") == "0.0441"
    assert pm({"mean": 0.8, "std": 0.012}, 100) == "80.00 ± 1.20"
    assert signed_pct(-0.14) == "-14.0%"
    assert [fmt_value(v) for v in (0.05, [1, 2], None, "x")] == ["0.05", "[1, 2]", "None", "x"]


def test_one_duration_formatter_three_styles():
    """comparison.md's cost table and verdict ("short"), its conditions ("minutes"), progress ("clock")."""
    short = ["12.3 s", "60.0 s", "1:00", "2:37", "1:02:05"]
    assert [duration(s) for s in (12.34, 59.96, 60, 157.4, 3725)] == short
    clock = ["0:00:00", "0:00:59", "1:02:05", "10:00:00"]
    assert [duration(s, "clock") for s in (0, 59.4, 3725, 36000)] == clock
    assert [duration(s, "minutes") for s in (45, 60, 258)] == ["45.0 s", "1.0 min", "4.3 min"]
    for unknown in (None, math.nan, math.inf, -1.0):
        assert duration(unknown) == duration(unknown, "clock") == duration(unknown, "minutes") == MISSING


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    from organseg.formatting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "f.png")
    assert path.read_bytes().startswith(PNG_MAGIC) and not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # no temporary left


# ------------------------------------------------------------------------------------------------ divergence


def test_a_diverged_training_process_exits_with_its_own_code(tmp_path, monkeypatch, capsys):
    def diverge(*args, **kwargs):
        raise TrainingDiverged("loss is nan at iteration 3 (epoch 1): the last good checkpoint is x")

    monkeypatch.setattr(organseg.training, "train", diverge)
    assert main(["train", "unet_synapse", "--out", str(tmp_path / "r")]) == EXIT_DIVERGED != 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "organseg train: error: loss is nan at iteration 3 (epoch 1): the last good checkpoint is x"
    ]


def _pool(tmp_path: Path):
    from organseg.study.runner import _ProcessPool

    return _ProcessPool([], tmp_path, 1, 1, {"a": "[1/1] a"}, [], progress=False)


def _finish(pool, name: str, code: int, message: str) -> None:
    (pool.out / "runs" / name).mkdir(parents=True)
    pool.totals[name] = 3
    pool._start(name, "train", [sys.executable, "-c", f"import sys; print({message!r}); sys.exit({code})"])
    pool.running[name][1].wait()
    pool._reap()


def test_the_study_tells_divergence_by_the_exit_code_not_the_message(tmp_path):
    pool = _pool(tmp_path)
    _finish(pool, "a", EXIT_DIVERGED, "organseg train: error: loss is inf at iteration 2")
    assert pool.failed == {"a": "diverged: organseg train: error: loss is inf at iteration 2"}
    # Exit code 2 is any other failure, whatever the message says.
    with pytest.raises(OrgansegError, match=r"training failed \(exit code 2\): .*training stopped"):
        _finish(pool, "b", 2, "organseg train: error: loss is nan: training stopped")


def test_env_names_the_cpu_model_and_its_bf16_instructions(monkeypatch, tmp_path):
    """The cost table's "trained on" column: a CPU is named by its model and bf16 instructions, not by
    ``platform.processor()`` (which reads "x86_64" on Linux)."""
    import torch

    from organseg import device
    from organseg.training import runlog

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n")
    monkeypatch.setattr(device, "CPUINFO", cpuinfo)
    assert runlog.device_name(torch.device("cpu")) == "Some Xeon (amx_bf16, avx512_bf16)"
    cpuinfo.write_text("model name\t: Plain CPU\nflags\t\t: fpu avx2\n")
    assert runlog.device_name(torch.device("cpu")) == "Plain CPU"
