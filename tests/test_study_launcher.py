"""``organseg compare --launcher slurm`` (issue 12): every grid point as a job through submitit.

No cluster here: the launcher runs its jobs through submitit's LOCAL executor (each job a process on this
machine) and must give the in-process runner's results exactly; the SLURM options are checked where they
end up (the executor's parameters and the sbatch script it would submit); the wait loop's resubmission and
failure paths run against stand-in job handles; and every bad option is one line naming it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import FRACTIONS, fraction_argv, fraction_phantom, write_presets
from organseg.cli.main import build_parser, main
from organseg.errors import OrgansegError
from organseg.study import run_study
from organseg.study.launcher import (
    DEFAULT_TIME_MIN,
    JOB_DIR,
    MAX_TIMEOUTS,
    GridPointJob,
    SlurmOptions,
    SubmititLauncher,
    from_args,
    make_executor,
)

submitit = pytest.importorskip("submitit", reason="the launcher needs the optional extra organseg[slurm]")


@pytest.fixture(scope="module")
def local_study(tmp_path_factory) -> dict:
    """The U-Net half of the fraction study twice: in this process, and as jobs of the local executor."""
    root = tmp_path_factory.mktemp("launcher")
    data = fraction_phantom(root)
    preset = write_presets(root, max_iterations=4, val_every=1)  # the fraction study's presets
    assert main(fraction_argv(data, preset, root / "inprocess", models=("unet",))) == 0
    launcher = SubmititLauncher(SlurmOptions(partition="test", gpus_per_run=0), cluster="local", poll_s=0.2)
    kw = dict(
        seeds=[1],
        sets=[f"data.train_fraction={','.join(FRACTIONS)}"],
        preset=preset,
        device="cpu",
        report=False,
        progress=False,
        launcher=launcher,
    )
    result = run_study(data, ["unet"], root / "jobs", **kw)
    return {"root": root, "data": data, "preset": preset, "result": result, "kw": kw}


NAMES = ["unet__seed1__train_fraction0.5", "unet__seed1__train_fraction1"]


def test_jobs_give_the_in_process_results(local_study):
    root = local_study["root"]
    result = local_study["result"]
    assert result["trained"] == NAMES and result["tested"] == NAMES
    for name in NAMES:
        mine, ref = root / "jobs" / "runs" / name, root / "inprocess" / "runs" / name
        assert list((mine / JOB_DIR).glob("*_log.out")), "the job's log is kept beside the run"
        assert json.loads((mine / JOB_DIR / "job.json").read_text())["cluster"] == "local"
        a = json.loads((mine / "results" / "test_last" / "summary.json").read_text())
        b = json.loads((ref / "results" / "test_last" / "summary.json").read_text())
        for key in ("reference", "corrected", "class_names", "cases"):
            assert a[key] == b[key], (name, key)
        pa = json.loads((mine / "results" / "test_last" / "per_case.json").read_text())
        pb = json.loads((ref / "results" / "test_last" / "per_case.json").read_text())
        assert [c["classes"] for c in pa] == [c["classes"] for c in pb]
        wa = torch.load(mine / "checkpoints" / "last.pt", weights_only=True)["model"]
        wb = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)["model"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ref = json.loads((root / "inprocess" / "comparison.json").read_text())
    assert [g["reference"] for g in result["groups"]] == [g["reference"] for g in ref["groups"]]
    assert [g["corrected"] for g in result["groups"]] == [g["corrected"] for g in ref["groups"]]


def test_a_second_call_submits_nothing(local_study, capsys):
    kw = {**local_study["kw"]}
    result = run_study(local_study["data"], ["unet"], local_study["root"] / "jobs", **kw)
    out = capsys.readouterr().out
    assert result["trained"] == [] and result["tested"] == []
    assert "submitted" not in out and out.count("reused") == 2 * len(NAMES)  # training and results


def test_the_job_requeues_itself_unchanged():
    job = GridPointJob("r", {"train": {}}, "/data", "/out/runs/r")
    delayed = job.__submitit_checkpoint__()
    assert delayed.function is job and delayed.args == () and delayed.kwargs == {}


# ----------------------------------------------------------------------- SLURM options reach the executor


@pytest.fixture
def fake_slurm(monkeypatch):
    """sbatch and srun "on the PATH": the SLURM executor can be built (nothing is submitted)."""
    real = shutil.which
    monkeypatch.setattr(
        shutil,
        "which",
        lambda name, *a, **k: f"/usr/bin/{name}" if name in ("sbatch", "srun") else real(name, *a, **k),
    )


def parse(argv: list[str]):
    return build_parser().parse_args(["compare", "--data", "d", "--models", "unet", "--out", "o", *argv])


def test_slurm_options_reach_the_executor_and_its_sbatch_script(fake_slurm, tmp_path):
    args = parse(
        [
            "--launcher",
            "slurm",
            "--slurm-partition",
            "gpu",
            "--gpus-per-run",
            "2",
            "--slurm-time",
            "90",
            "--slurm-cpus-per-run",
            "8",
            "--slurm-mem-gb",
            "64",
            "--slurm-account",
            "lab",
            "--slurm-qos",
            "high",
            "--slurm-constraint",
            "a100",
            "--slurm-setup",
            "module load cuda",
            "--slurm-setup",
            "source env/bin/activate",
            "--slurm-extra",
            "mail-type=END",
            "--slurm-max-parallel",
            "4",
            "--slurm-retries",
            "5",
        ]
    )
    launcher = from_args(args)
    assert (
        launcher.cluster == "slurm" and launcher.options.max_parallel == 4 and launcher.options.retries == 5
    )
    ex = make_executor(tmp_path, launcher.options, "unet__seed1", "slurm")._executor
    assert isinstance(ex, submitit.SlurmExecutor) and ex.max_num_timeout == MAX_TIMEOUTS
    p = ex.parameters
    assert p["partition"] == "gpu" and p["time"] == 90 and p["gpus_per_node"] == 2
    assert p["ntasks_per_node"] == 2 and p["nodes"] == 1 and p["cpus_per_task"] == 8 and p["mem"] == "64GB"
    assert p["account"] == "lab" and p["qos"] == "high" and p["constraint"] == "a100"
    assert p["job_name"] == "organseg-unet__seed1"
    assert p["setup"] == ["module load cuda", "source env/bin/activate"]
    assert p["additional_parameters"] == {"mail-type": "END"}
    script = ex._make_submission_file_text("python -m x", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --time=90",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=a100",
        "#SBATCH --mail-type=END",
        "#SBATCH --job-name=organseg-unet__seed1",
        "module load cuda",
    ):
        assert line in script.splitlines(), line


def test_slurm_defaults_leave_the_rest_to_the_cluster(fake_slurm, tmp_path):
    launcher = from_args(parse(["--launcher", "slurm", "--slurm-partition", "gpu"]))
    p = make_executor(tmp_path, launcher.options, "r", "slurm")._executor.parameters
    assert p["time"] == DEFAULT_TIME_MIN and p["gpus_per_node"] == 1 and p["ntasks_per_node"] == 1
    assert not {"cpus_per_task", "mem", "account", "qos", "constraint", "setup"} & set(p)
    cpu = from_args(parse(["--launcher", "slurm", "--slurm-partition", "cpu", "--gpus-per-run", "0"]))
    p = make_executor(tmp_path, cpu.options, "r", "slurm")._executor.parameters
    assert p["gpus_per_node"] == 0 and p["ntasks_per_node"] == 1
    assert from_args(parse([])) is None  # --launcher local (the default): train here


# --------------------------------------------------------------------------------- bad options, one line


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refuses a value of the wrong type itself
        return int(exc.code)


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--launcher", "slurm"], "--slurm-partition"),
        (["--launcher", "slurm", "--slurm-partition", " "], "--slurm-partition"),
        (["--slurm-partition", "gpu"], "--slurm-partition"),
        (["--gpus-per-run", "2", "--slurm-time", "60"], "--gpus-per-run, --slurm-time"),
        (["--launcher", "slurm", "--slurm-partition", "gpu", "--jobs", "2"], "--jobs"),
        (["--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-extra", "mail-type"], "--slurm-extra"),
        (["--launcher", "slurm", "--slurm-partition", "gpu", "--gpus-per-run", "-1"], "--gpus-per-run"),
        (["--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-time", "0"], "--slurm-time"),
        (["--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-mem-gb", "x"], "--slurm-mem-gb"),
        (["--launcher", "pbs"], "--launcher"),
    ],
)
def test_bad_launcher_options_are_one_line_errors(argv, names, tmp_path, capsys):
    rc = run_main(
        [
            "compare",
            "--data",
            str(tmp_path / "nodata"),
            "--models",
            "unet",
            "--out",
            str(tmp_path / "o"),
            *argv,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("organseg compare: error:"), err
    assert len(err) == 1 or err[0].startswith("usage:"), err  # argparse's own errors come with the usage
    assert names in err[-1], err
    assert not (tmp_path / "o").exists()


def test_collect_with_slurm_is_refused(tmp_path, capsys):
    rc = main(
        ["compare", "--collect", "--out", str(tmp_path), "--launcher", "slurm", "--slurm-partition", "p"]
    )
    assert rc == 2 and "--collect" in capsys.readouterr().err


def test_without_submitit_the_error_names_the_extra(monkeypatch, fake_slurm, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    rc = main(
        [
            "compare",
            "--data",
            str(tmp_path),
            "--models",
            "unet",
            "--out",
            str(tmp_path / "o"),
            "--launcher",
            "slurm",
            "--slurm-partition",
            "gpu",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "organseg[slurm]" in err[0] and "submitit" in err[0], err


def test_without_sbatch_the_error_says_where_to_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    rc = main(
        [
            "compare",
            "--data",
            str(tmp_path),
            "--models",
            "unet",
            "--out",
            str(tmp_path / "o"),
            "--launcher",
            "slurm",
            "--slurm-partition",
            "gpu",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "sbatch" in err[0] and "login node" in err[0], err


# ----------------------------------------------------------------------------- the wait loop, stand-ins


class FakeHandle:
    """A submitted job as the wait loop sees it: done at once, then a result or an error."""

    def __init__(self, job_id: str, outcome, folder: Path) -> None:
        self.job_id, self.outcome, self.cancelled = job_id, outcome, False
        self.state = "NODE_FAIL"
        self.paths = SimpleNamespace(
            stdout=folder / f"{job_id}_0_log.out", stderr=folder / f"{job_id}_0_log.err"
        )

    def done(self) -> bool:
        return not isinstance(self.outcome, str) or self.outcome != "running"

    def results(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return [self.outcome]

    def cancel(self, check: bool = True) -> None:
        self.cancelled = True


def fake_launcher(monkeypatch, tmp_path, outcomes: dict[str, list], retries: int = 2) -> SubmititLauncher:
    launcher = SubmititLauncher(SlurmOptions(partition="p", retries=retries), cluster="slurm", poll_s=0.0)
    submitted: list[FakeHandle] = []

    def submit(job):
        handle = FakeHandle(f"{len(submitted) + 100}", outcomes[job.name].pop(0), tmp_path)
        submitted.append(handle)
        return handle

    monkeypatch.setattr(launcher, "_submit", submit)
    launcher.submitted = submitted  # type: ignore[attr-defined]
    return launcher


def plans(*names: str) -> list:
    return [SimpleNamespace(name=n, config={"train": {"precision": "fp32"}}) for n in names]


def test_a_job_ending_unfinished_is_resubmitted(monkeypatch, tmp_path, capsys):
    from submitit.core.utils import UncompletedJobError

    gone = UncompletedJobError("Job 100 has not produced any output (state: NODE_FAIL)")
    launcher = fake_launcher(
        monkeypatch,
        tmp_path,
        {"a": [gone, {"status": "done"}], "b": [{"status": "diverged", "reason": "diverged: nan"}]},
    )
    failed, done = launcher.run(plans("a", "b"), tmp_path / "runs", tmp_path / "data", {})
    assert done == ["a"] and failed == {"b": "diverged: nan"}
    assert len(launcher.submitted) == 3
    out = capsys.readouterr().out
    assert "job 100 ended without finishing (state NODE_FAIL); resubmitted as job 102" in out


def test_a_job_submitit_could_not_requeue_is_resubmitted(monkeypatch, tmp_path):
    from submitit.core.utils import FailedJobError

    trace = (
        "Job (task=0) failed during processing with trace:\n----------------------\nTraceback ...\n"
        "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times.\n"
        "----------------------\nYou can check full logs with 'job.stderr(0)'"
    )
    launcher = fake_launcher(monkeypatch, tmp_path, {"a": [FailedJobError(trace), {"status": "done"}]})
    assert launcher.run(plans("a"), tmp_path / "runs", tmp_path / "data", {}) == ({}, ["a"])
    assert len(launcher.submitted) == 2


def test_a_job_unfinished_too_often_stops_the_study(monkeypatch, tmp_path):
    from submitit.core.utils import UncompletedJobError

    launcher = fake_launcher(
        monkeypatch, tmp_path, {"a": [UncompletedJobError("x"), UncompletedJobError("y")]}, retries=1
    )
    with pytest.raises(OrgansegError) as err:
        launcher.run(plans("a"), tmp_path / "runs", tmp_path / "data", {})
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "runs" / "a") in msg and "after 1 resubmission" in msg
    assert "--slurm-retries" in msg


def test_a_failing_job_is_one_line_naming_the_run_and_cancels_the_rest(monkeypatch, tmp_path):
    from submitit.core.utils import FailedJobError

    trace = (
        "Job (task=0) failed during processing with trace:\n----------------------\nTraceback ...\n"
        "organseg.errors.ConfigError: model 'unet' with args {'in_chans': 3}: bad\n----------------------\n"
        "You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /x/y.err\n"
        "  - /x/y.out"
    )
    launcher = fake_launcher(monkeypatch, tmp_path, {"a": [FailedJobError(trace)], "b": ["running"]})
    with pytest.raises(OrgansegError) as err:
        launcher.run(plans("a", "b"), tmp_path / "runs", tmp_path / "data", {})
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "runs" / "a") in msg and "job 100 failed" in msg
    assert "_log.err" in msg
    assert launcher.submitted[1].cancelled  # the other job does not run on for nothing


# --------------------------------------------------------------------------------- preempted, requeued


ITERATIONS = 200  # 2 per epoch: last.pt comes after 2, the run goes on long enough to be signalled


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="finds the job's process through Linux /proc"
)
def test_a_preempted_job_is_requeued_and_resumes_to_the_same_weights(local_study, tmp_path, monkeypatch):
    """SLURM preempts a job by signalling it (SIGUSR2); here the signal goes to the local job's process once
    its run has a checkpoint. submitit requeues the same call and the training resumes from last.pt: the
    run ends with the weights of an uninterrupted in-process run."""
    import os
    import signal
    import threading
    import time

    import yaml

    preset = tmp_path / "long_unet.yaml"
    cfg = yaml.safe_load(Path(local_study["preset"].format(model="unet")).read_text())
    cfg["train"]["max_iterations"], cfg["val"]["every"] = ITERATIONS, 0
    preset.write_text(yaml.safe_dump(cfg))
    kw = dict(seeds=[1], preset=str(preset), device="cpu", report=False, progress=False)
    run_study(local_study["data"], ["unet"], tmp_path / "inprocess", **kw)

    launcher = SubmititLauncher(SlurmOptions(partition="test", gpus_per_run=0), cluster="local", poll_s=0.2)
    handles: list = []
    submit = launcher._submit
    monkeypatch.setattr(launcher, "_submit", lambda job: handles.append(submit(job)) or handles[-1])
    run_dir = tmp_path / "jobs" / "runs" / "unet__seed1"
    sent: list[int] = []

    def preempt() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not sent:
            if handles and (run_dir / "checkpoints" / "last.pt").is_file():
                for pid in _children(handles[0]._process.pid):
                    os.kill(pid, signal.SIGUSR2)
                    sent.append(pid)
            time.sleep(0.01)

    watcher = threading.Thread(target=preempt, daemon=True)
    watcher.start()
    result = run_study(local_study["data"], ["unet"], tmp_path / "jobs", launcher=launcher, **kw)
    watcher.join(timeout=5)
    assert sent, "the job was never signalled"
    assert result["trained"] == ["unet__seed1"] and len(handles) == 1  # requeued, not resubmitted
    log = "".join(p.read_text() for p in (run_dir / JOB_DIR).glob("*_log.*"))
    assert "resuming at iteration" in log and "Requeued" in log
    mine = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    ref = torch.load(
        tmp_path / "inprocess" / "runs" / "unet__seed1" / "checkpoints" / "last.pt", weights_only=True
    )
    assert mine["iteration"] == ref["iteration"] == ITERATIONS
    assert all(torch.equal(mine["model"][k], ref["model"][k]) for k in ref["model"])


# ------------------------------------------------------------------- a job left running by a lost session


def test_a_run_whose_job_still_runs_is_not_submitted_twice(monkeypatch, tmp_path):
    import organseg.study.launcher as launcher_module

    (tmp_path / "runs" / "a" / JOB_DIR).mkdir(parents=True)
    (tmp_path / "runs" / "a" / JOB_DIR / "job.json").write_text('{"job_id": "4242", "cluster": "slurm"}')
    launcher = fake_launcher(monkeypatch, tmp_path, {"a": [{"status": "done"}], "b": [{"status": "done"}]})
    monkeypatch.setattr(launcher_module, "_slurm_state", lambda job_id: "PENDING" if job_id == "4242" else "")
    with pytest.raises(OrgansegError) as err:
        launcher.run(plans("b", "a"), tmp_path / "runs", tmp_path / "data", {})
    msg = str(err.value)
    assert "\n" not in msg and "job 4242 is still pending" in msg and "scancel 4242" in msg
    assert launcher.submitted == []  # checked before anything is submitted
    monkeypatch.setattr(launcher_module, "_slurm_state", lambda job_id: "")  # it has finished since
    assert launcher.run(plans("b", "a"), tmp_path / "runs", tmp_path / "data", {}) == ({}, ["b", "a"])


def test_squeue_state_of_a_job(monkeypatch):
    import subprocess

    import organseg.study.launcher as launcher_module

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        listed = {"7": "RUNNING\n", "8": ""}
        if cmd[-1] in listed:
            return subprocess.CompletedProcess(cmd, 0, stdout=listed[cmd[-1]], stderr="")
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Invalid job id specified")

    monkeypatch.setattr(launcher_module.subprocess, "run", fake_run)
    assert launcher_module._slurm_state("7") == "RUNNING"
    assert launcher_module._slurm_state("8") == "" and launcher_module._slurm_state("9") == ""
    assert calls[0] == ["squeue", "-h", "-o", "%T", "-j", "7"]


def test_states_the_study_read_are_used_without_reading_the_checkpoints_again(monkeypatch, tmp_path):
    from organseg.study import runner

    def read_again(*_a, **_k):
        raise AssertionError("run_state called although the study passed the states")

    launcher = fake_launcher(monkeypatch, tmp_path, {"a": [{"status": "done"}]})
    monkeypatch.setattr(runner, "run_state", read_again)
    states = {"a": ("new", 0)}
    assert launcher.run(plans("a"), tmp_path / "runs", tmp_path / "data", {}, states=states) == ({}, ["a"])
    assert len(launcher.submitted) == 1
