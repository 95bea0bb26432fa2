"""``organseg compare --launcher slurm``: every grid point of a study as a SLURM job, through submitit.

A study of 2 networks x 3 seeds x 4 training fractions is 24 full trainings: a cluster's job. With
``--launcher slurm --slurm-partition P --gpus-per-run N`` the study plans its grid as always (the same run
names, the same reuse of finished runs), then submits one job per grid point with work left. The job trains
the run (resuming its ``last.pt`` if there is one) into ``OUT/runs/NAME`` and tests it there, exactly as the
local runner would; this process waits for every job and then aggregates the run folders as usual.

Preemption and time limits: the job is requeued by submitit when SLURM signals it (preemption, or
``--slurm-time`` reached; up to :data:`MAX_TIMEOUTS` times for the time limit), and the requeued job resumes
from the run's last checkpoint, so a long training may run as a chain of ``--slurm-time`` pieces. A job that
ends without a result anyway (a node failure, a preemption the cluster did not requeue) is submitted again,
``--slurm-retries`` times (default :data:`DEFAULT_RETRIES`). A job that fails (an error in training or
testing) stops the study with one line naming the run and its log; a diverged run is a result of the sweep
and is listed as skipped, as the local runner does.

Each run's job files (submitit's pickles, the job's stdout/stderr, ``job.json``: the id of its last job) are
in ``OUT/runs/NAME/slurm/``; a run whose last job is still queued or running (a ``compare`` that lost its
login session leaves its jobs behind) is not submitted again (:func:`check_no_live_job`). The data,
the study folder and the Python environment must be on a file system the compute nodes see (they are read
and written in place). With ``--gpus-per-run N`` > 1 the job starts N processes (one per GPU) that train
with DistributedDataParallel, as ``torchrun`` would; the test runs in the first.

Needs the optional extra ``organseg[slurm]`` (submitit). The tests drive the same code through submitit's
local executor (``cluster="local"``: each job a process on this machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from organseg.data import open_dataset
from organseg.errors import ConfigError, OrgansegError
from organseg.evaluation.tester import run_test
from organseg.fileio import atomic_write_text
from organseg.run import RunDir
from organseg.stopping import StopSignal
from organseg.study.runner import fresh_results, run_state
from organseg.training import train
from organseg.training.loop import TrainingDiverged
from organseg.values import POSITIVE_INT, Rule, option

LAUNCHERS = ("local", "slurm")
DEFAULT_TIME_MIN = 24 * 60
DEFAULT_RETRIES = 2
#: requeues after reaching --slurm-time: a run longer than one time slot trains in pieces
MAX_TIMEOUTS = 20
JOB_DIR = "slurm"
JOB_RECORD = "job.json"  # the run's last submitted job
EXTRA = "pip install 'organseg[slurm]'"


@dataclass(frozen=True)
class SlurmOptions:
    """What every job of a study asks SLURM for (``--slurm-*``, ``--gpus-per-run``)."""

    partition: str
    gpus_per_run: int = 1
    time_min: int = DEFAULT_TIME_MIN
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()
    max_parallel: int | None = None
    retries: int = DEFAULT_RETRIES


def _submitit():
    try:
        import submitit  # noqa: PLC0415 (the optional organseg[slurm] extra)
    except ImportError:
        raise ConfigError(f"--launcher slurm needs the optional extra: {EXTRA} (submitit)") from None
    return submitit


def executor_parameters(options: SlurmOptions, name: str) -> dict[str, Any]:
    """The ``AutoExecutor.update_parameters`` arguments of one run's job: one node, one task per GPU (one
    task on a CPU-only partition), the rest from the options; unset options are left to the cluster."""
    tasks = max(1, options.gpus_per_run)
    params: dict[str, Any] = {
        "name": f"organseg-{name}",
        "timeout_min": options.time_min,
        "nodes": 1,
        "tasks_per_node": tasks,
        "gpus_per_node": options.gpus_per_run,
        "cpus_per_task": options.cpus_per_run,
        "mem_gb": options.mem_gb,
        "slurm_partition": options.partition,
        "slurm_account": options.account,
        "slurm_qos": options.qos,
        "slurm_constraint": options.constraint,
        "slurm_setup": list(options.setup) or None,
        "slurm_additional_parameters": dict(options.extra) or None,
    }
    return {k: v for k, v in params.items() if v is not None}


def make_executor(folder: str | Path, options: SlurmOptions, name: str, cluster: str = "slurm"):
    """A submitit executor for one run's job, writing its files in ``folder``."""
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster, slurm_max_num_timeout=MAX_TIMEOUTS)
    executor.update_parameters(**executor_parameters(options, name))
    return executor


# ------------------------------------------------------------------------------------------------ the job


@dataclass
class GridPointJob:
    """One grid point inside a cluster job: train (or resume) the run, then test it (rank 0), as the local
    runner does. Returns ``{"status": "done"}`` or ``{"status": "diverged", "reason": ...}``; any other
    failure raises (submitit reports it to the waiting study).

    When SLURM preempts the job or its time runs out, submitit calls :meth:`__submitit_checkpoint__` and
    requeues the same call; the training then resumes from the run's ``last.pt``."""

    name: str
    config: dict
    data: str
    run_dir: str
    split: str = "test"
    checkpoint: str = "last"
    device: str = "auto"
    report: bool = True

    def __call__(self) -> dict[str, str]:
        rank = _start_processes()
        run_dir = Path(self.run_dir)
        dataset = open_dataset(self.data)
        cfg = copy.deepcopy(self.config)
        cfg["train"]["progress"] = False  # a runtime key: the run stays the same run; logs stay short
        if run_state(run_dir, cfg)[0] != "complete":
            try:
                train(cfg, dataset, run_dir, resume=True)
            except TrainingDiverged as exc:
                return {"status": "diverged", "reason": f"diverged: {exc}"}
        if rank != 0:
            return {"status": "done"}
        precision = cfg["train"]["precision"]
        rd = RunDir(run_dir)
        ckpt = rd.checkpoint(self.checkpoint)
        if not fresh_results(rd.results(self.split, self.checkpoint), ckpt, precision):
            run_test(  # as the local runner: no viewer pages for a study's many runs
                run_dir,
                data=dataset,
                split=self.split,
                checkpoint=self.checkpoint,
                precision=precision,
                device=self.device,
                report=self.report,
                progress=False,
                viewer=False,
            )
        return {"status": "done"}

    def __submitit_checkpoint__(self, *args: Any, **kwargs: Any):
        """Requeue the same call: the state that matters is on disk (``last.pt``), not in this object."""
        from submitit.helpers import DelayedSubmission  # noqa: PLC0415 (the optional organseg[slurm] extra)

        return DelayedSubmission(self, *args, **kwargs)


def _start_processes() -> int:
    """This task's rank. A job of several tasks (``--gpus-per-run`` > 1) exports what ``torchrun`` would
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so that the trainer starts DistributedDataParallel."""
    import submitit  # noqa: PLC0415 (the optional organseg[slurm] extra)

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        # Each process keeps every GPU of the node visible and takes the one of its local rank.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return int(env.global_rank)


# --------------------------------------------------------------------------------------------- the study


def _slurm_state(job_id: str) -> str:
    """The state squeue gives a job ("PENDING", "RUNNING", ...), "" when it lists none (finished, or
    squeue cannot tell)."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%T", "-j", job_id],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""


def check_no_live_job(run_dir: Path) -> None:
    """Refuse to submit a run whose previous job is still queued or running (a ``compare`` whose login
    session was lost leaves its jobs running): two jobs would train the same run folder at once."""
    record = run_dir / JOB_DIR / JOB_RECORD
    try:
        job_id = str(json.loads(record.read_text(encoding="utf-8"))["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record (never submitted, or by hand): nothing to wait for
    state = _slurm_state(job_id)
    if state:
        raise OrgansegError(
            f"{run_dir}: its job {job_id} is still {state.lower()} (from an earlier organseg compare); wait "
            f"for it (squeue -j {job_id}) or cancel it (scancel {job_id}), then run the command again"
        )


_NOT_REQUEUED = "Job not requeued"  # what submitit's job raises when it could not requeue itself


def _error_line(text: str) -> str:
    """The exception line of a failed job's report (submitit puts the job's traceback between two rules of
    dashes, then the log paths): ``organseg.errors.ConfigError: ...``."""
    parts = re.split(r"^-{5,}$", str(text), flags=re.M)
    body = parts[1] if len(parts) >= 3 else str(text)
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    return lines[-1] if lines else "no error message"


class SubmititLauncher:
    """Runs a study's grid points as jobs (see the module docstring). ``cluster``: ``"slurm"``, or
    ``"local"`` (submitit's local executor: each job a process here; what the tests use)."""

    def __init__(self, options: SlurmOptions, *, cluster: str = "slurm", poll_s: float | None = None) -> None:
        self.options = options
        self.cluster = cluster
        self.poll_s = poll_s if poll_s is not None else (30.0 if cluster == "slurm" else 0.5)

    def _submit(self, job: GridPointJob):
        """Submit ``job`` and record its id in ``RUN_DIR/slurm/job.json`` (see :func:`check_no_live_job`)."""
        folder = Path(job.run_dir) / JOB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        handle = make_executor(folder, self.options, job.name, self.cluster).submit(job)
        record = {"job_id": str(handle.job_id), "cluster": self.cluster}
        atomic_write_text(folder / JOB_RECORD, json.dumps(record) + "\n")
        return handle

    def run(
        self,
        plans: Sequence[Any],
        runs_dir: str | Path,
        data: str | Path,
        heads: dict[str, str],
        *,
        split: str = "test",
        checkpoint: str = "last",
        device: str = "auto",
        report: bool = True,
        states: dict[str, tuple[str, int]] | None = None,
    ) -> tuple[dict[str, str], list[str]]:
        """Submit a job for every planned run (``PlannedRun``) with work left, resubmit the ones that end
        without a result, wait for all. ``states`` are the runs' :func:`run_state` when the caller has read
        them already (each reads a checkpoint). Returns ({run name: reason} of the diverged runs, the names
        the jobs trained or tested, in the grid's order)."""
        _submitit()
        jobs = []
        for plan in plans:
            run_dir = Path(runs_dir) / plan.name
            rd = RunDir(run_dir)
            precision = plan.config["train"]["precision"]
            fresh = fresh_results(rd.results(split, checkpoint), rd.checkpoint(checkpoint), precision)
            state = states[plan.name] if states and plan.name in states else run_state(run_dir, plan.config)
            if state[0] == "complete" and fresh:
                continue  # the study reports it as reused
            jobs.append(
                GridPointJob(
                    plan.name, plan.config, str(data), str(run_dir), split, checkpoint, device, report
                )
            )
        if self.cluster == "slurm":
            for job in jobs:  # before anything is submitted
                check_no_live_job(Path(job.run_dir))
        if jobs:
            where = f"partition {self.options.partition}" if self.cluster == "slurm" else "this machine"
            print(
                f"organseg compare: {len(jobs)} job(s) on {where}, {self.options.gpus_per_run} GPU(s) each",
                flush=True,
            )
        failed, done = self._wait(jobs, heads)
        return failed, [j.name for j in jobs if j.name in done]

    def _wait(self, jobs: list[GridPointJob], heads: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        """Keep at most ``max_parallel`` jobs submitted, settle each as it ends; on any error or interrupt
        cancel the jobs still queued or running."""
        pending = list(jobs)
        active: dict[str, tuple[GridPointJob, Any, int]] = {}  # name -> (job, submitit job, resubmissions)
        failed: dict[str, str] = {}
        done: list[str] = []
        limit = self.options.max_parallel or len(jobs) or 1
        try:
            while pending or active:
                while pending and len(active) < limit:
                    job = pending.pop(0)
                    handle = self._submit(job)
                    active[job.name] = (job, handle, 0)
                    print(
                        f"{heads.get(job.name, job.name)}: job {handle.job_id} submitted "
                        f"(log {handle.paths.stdout})",
                        flush=True,
                    )
                finished = [name for name, (_, handle, _) in active.items() if handle.done()]
                if not finished:
                    time.sleep(self.poll_s)
                for name in finished:
                    job, handle, tries = active.pop(name)
                    head = heads.get(name, name)
                    result, again = self._settle(job, handle, tries, head)
                    if again is not None:
                        active[name] = (job, again, tries + 1)
                    elif result.get("status") == "diverged":
                        failed[name] = result.get("reason", "diverged")
                        print(f"{head}: {failed[name]}", flush=True)
                    else:
                        done.append(name)
                        print(f"{head}: job {handle.job_id} finished ({len(done)}/{len(jobs)})", flush=True)
        except BaseException as exc:
            for _, handle, _ in active.values():  # interrupted, or another job failed: stop the rest
                handle.cancel(check=False)
            if isinstance(
                exc, StopSignal
            ):  # SIGTERM (scancel of this job), SIGHUP or SIGINT: one line says it
                exc.runs = len(active)
            elif active:
                print(
                    f"organseg compare: cancelled {len(active)} unfinished job(s); run the same command "
                    "again to resume them",
                    flush=True,
                )
            raise
        return failed, done

    def _settle(self, job: GridPointJob, handle: Any, tries: int, head: str) -> tuple[dict | None, Any]:
        """(the result, None) of an ended job, or (None, the new job) when it ended unfinished and was
        submitted again. A job that failed raises one line naming the run, the error and the log."""
        from submitit.core.utils import FailedJobError, UncompletedJobError  # noqa: PLC0415 (organseg[slurm])

        try:
            return handle.results()[0], None  # the first task's (rank 0) result
        except UncompletedJobError as exc:  # FailedJobError too: it is a subclass
            line = _error_line(str(exc))
            # submitit's own "not requeued" (requeue refused, timed out too often) is no error of the run:
            # like a node failure, the job just did not finish.
            if isinstance(exc, FailedJobError) and _NOT_REQUEUED not in line:
                raise OrgansegError(
                    f"{job.run_dir}: job {handle.job_id} failed: {line} (see {handle.paths.stderr})"
                ) from None
        if tries >= self.options.retries:
            raise OrgansegError(
                f"{job.run_dir}: job {handle.job_id} ended without finishing (state {handle.state}) after "
                f"{tries} resubmission(s) (see {handle.paths.stdout}; --slurm-retries sets how many)"
            )
        again = self._submit(job)
        print(
            f"{head}: job {handle.job_id} ended without finishing (state {handle.state}); resubmitted as "
            f"job {again.job_id}, resuming from the last checkpoint",
            flush=True,
        )
        return None, again


# ---------------------------------------------------------------------------------------- command line

_SLURM_FLAGS = (
    ("--slurm-partition", "slurm_partition"),
    ("--gpus-per-run", "gpus_per_run"),
    ("--slurm-time", "slurm_time"),
    ("--slurm-cpus-per-run", "slurm_cpus_per_run"),
    ("--slurm-mem-gb", "slurm_mem_gb"),
    ("--slurm-account", "slurm_account"),
    ("--slurm-qos", "slurm_qos"),
    ("--slurm-constraint", "slurm_constraint"),
    ("--slurm-setup", "slurm_setup"),
    ("--slurm-extra", "slurm_extra"),
    ("--slurm-max-parallel", "slurm_max_parallel"),
    ("--slurm-retries", "slurm_retries"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``compare``'s launcher options (an argument group of their own)."""
    g = p.add_argument_group("cluster jobs (--launcher slurm; docs/compare.md)")
    g.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help=f"local: train here (default); slurm: one SLURM job per grid point, through submitit ({EXTRA})",
    )
    g.add_argument("--slurm-partition", metavar="P", help="partition of the jobs (needed with slurm)")
    g.add_argument(
        "--gpus-per-run",
        type=option(Rule("int", lo=0, hi=64)),
        metavar="N",
        help="GPUs per grid point, one training process each (default 1; 0: CPU)",
    )
    g.add_argument(
        "--slurm-time",
        type=option(POSITIVE_INT),
        metavar="MIN",
        help=f"time limit of a job in minutes (default {DEFAULT_TIME_MIN}); a run that needs "
        "longer is requeued and resumes from its last checkpoint",
    )
    g.add_argument(
        "--slurm-cpus-per-run",
        type=option(POSITIVE_INT),
        metavar="N",
        help="CPU cores per training process (default: the partition's)",
    )
    g.add_argument(
        "--slurm-mem-gb",
        type=option(Rule("float", lo=0, lo_open=True)),
        metavar="GB",
        help="memory per job (default: the partition's)",
    )
    g.add_argument("--slurm-account", metavar="A", help="account to charge")
    g.add_argument("--slurm-qos", metavar="Q", help="quality of service")
    g.add_argument("--slurm-constraint", metavar="C", help="node features, e.g. a100")
    g.add_argument(
        "--slurm-setup",
        action="append",
        metavar="CMD",
        help="shell line run before each job, e.g. 'module load cuda' (repeatable)",
    )
    g.add_argument(
        "--slurm-extra",
        action="append",
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. mail-type=END (repeatable)",
    )
    g.add_argument(
        "--slurm-max-parallel",
        type=option(POSITIVE_INT),
        metavar="N",
        help="at most N jobs queued or running at once (default: all)",
    )
    g.add_argument(
        "--slurm-retries",
        type=option(Rule("int", lo=0)),
        metavar="N",
        help=f"resubmissions of a job ending unfinished (default {DEFAULT_RETRIES})",
    )


def _extra(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not value.strip():
            raise ConfigError(f"--slurm-extra {item!r}: expected KEY=VALUE, e.g. mail-type=END")
        out.append((key, value.strip()))
    return tuple(out)


def from_args(args: argparse.Namespace) -> SubmititLauncher | None:
    """The launcher ``compare``'s options ask for: None for ``--launcher local`` (train here). Checks the
    options before anything runs: each error is one line naming the option."""
    given = [flag for flag, dest in _SLURM_FLAGS if getattr(args, dest, None) not in (None, [])]
    if args.launcher == "local":
        if given:
            raise ConfigError(f"{', '.join(given)}: only used with --launcher slurm")
        return None
    if getattr(args, "collect", None) is not None:
        raise ConfigError("--launcher slurm trains and tests; --collect only aggregates: give one of them")
    if getattr(args, "jobs", 1) != 1:
        raise ConfigError(
            "--jobs is for --launcher local; with --launcher slurm every grid point is its own job "
            "(--slurm-max-parallel limits how many at once)"
        )
    if not args.slurm_partition or not args.slurm_partition.strip():
        raise ConfigError("--launcher slurm needs --slurm-partition (the partition the jobs run in)")
    options = SlurmOptions(
        partition=args.slurm_partition.strip(),
        gpus_per_run=1 if args.gpus_per_run is None else args.gpus_per_run,
        time_min=args.slurm_time or DEFAULT_TIME_MIN,
        cpus_per_run=args.slurm_cpus_per_run,
        mem_gb=args.slurm_mem_gb,
        account=args.slurm_account,
        qos=args.slurm_qos,
        constraint=args.slurm_constraint,
        setup=tuple(args.slurm_setup or ()),
        extra=_extra(args.slurm_extra or ()),
        max_parallel=args.slurm_max_parallel,
        retries=DEFAULT_RETRIES if args.slurm_retries is None else args.slurm_retries,
    )
    _submitit()
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ConfigError(
            "--launcher slurm: no sbatch/srun on this machine's PATH; run organseg compare on a SLURM login "
            "node (or use --launcher local)"
        )
    return SubmititLauncher(options)


__all__ = [
    "GridPointJob",
    "SlurmOptions",
    "SubmititLauncher",
    "add_arguments",
    "check_no_live_job",
    "executor_parameters",
    "from_args",
    "make_executor",
]
