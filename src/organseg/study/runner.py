"""Running a study: train (or reuse / resume) and test every grid point, in this process or in parallel
``organseg train`` / ``organseg test`` processes, then aggregate.

A run whose final checkpoint is there and whose configuration matches is not trained again; a partial one is
resumed; fresh test results are reused. A run whose loss diverges is a result of the sweep, not a reason to
stop the study: in this process it raises :class:`~organseg.training.TrainingDiverged`, in a child process
it exits with :data:`organseg.run.EXIT_DIVERGED`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from organseg.checkpoint import read_checkpoint
from organseg.data import open_dataset
from organseg.data.detect import layout_options
from organseg.data.folds import apply_data_config
from organseg.data.identity import dataset_fingerprint
from organseg.device import resolve_device
from organseg.errors import ConfigError, DataError, OrgansegError
from organseg.evaluation.tester import run_test
from organseg.fileio import atomic_write_text, check_output, check_output_dir
from organseg.locks import folder_lock
from organseg.progress import progress_bar, progress_write
from organseg.reporting.tables import dataset_kind
from organseg.run import EXIT_DIVERGED, STUDY_RUNS, ResultsDir, RunDir
from organseg.stopping import PARENT_ENV, STOP_WAIT_S, StopSignal
from organseg.study.aggregate import check_comparisons, collect
from organseg.study.grid import DEFAULT_SEED, PlannedRun, Sweep, parse_sets, plan_runs
from organseg.training import TrainingDiverged, train
from organseg.training.config import check_network, config_differences, to_yaml
from organseg.training.schedule import run_length
from organseg.values import WORKERS, check_value

# What compare writes in its --out folder (the demo keeps its dataset there too).
STUDY_OUTPUTS = (STUDY_RUNS, "comparison.md", "comparison.json", "comparison.csv", "splits.json")
SPLITS_FILE = "splits.json"  # a cross-validation study's folds, in nnU-Net's splits_final.json form


def run_state(run_dir: Path, cfg: dict) -> tuple[str, int]:
    """("new" | "partial" | "complete", iterations done) of a run folder for the configuration ``cfg``.

    Raises ConfigError when the folder holds a run of another configuration (runtime keys aside), so a
    study never mixes recipes under one name.
    """
    last = RunDir(run_dir).checkpoint("last")
    if not last.is_file():
        return "new", 0
    ckpt = read_checkpoint(last)
    diff = config_differences(ckpt.get("config") or {}, cfg)
    if diff:
        raise ConfigError(
            f"{last}: this run was trained with another configuration ({'; '.join(diff)}); "
            "remove the folder or choose another --out"
        )
    done = int(ckpt.get("iteration", 0))
    ipe = int(ckpt.get("iterations_per_epoch") or 1)
    recorded = (ckpt.get("config") or {}).get("train", {})
    target = run_length({**cfg["train"], "fitted_iterations": recorded.get("fitted_iterations")}, ipe)
    budget = cfg["train"]["time_budget_min"]
    spent = budget is not None and float(ckpt.get("train_seconds") or 0.0) >= budget * 60
    return ("complete" if done >= target or spent else "partial"), done


def fresh_results(results: ResultsDir, checkpoint: Path, precision: str) -> bool:
    """Whether the results are the test of this very checkpoint on the whole split at ``precision`` (the
    one rule: :meth:`organseg.run.ResultsDir.stale`); the cluster launcher asks it too."""
    return results.stale(checkpoint, precision=precision) is None


class _Study:
    """One call of :func:`run_study`: its plans, what it trained, tested and lost to divergence."""

    def __init__(self, out: Path, plans: list[PlannedRun], dataset: Any, test_options: dict[str, Any]):
        self.out, self.plans, self.dataset, self.opts = out, plans, dataset, test_options
        self.data_fingerprint = dataset_fingerprint(dataset)["digest"]
        self.heads = {p.name: f"[{n}/{len(plans)}] {p.name}" for n, p in enumerate(plans, start=1)}
        self.trained: list[str] = []
        self.tested: list[str] = []
        self.failed: dict[str, str] = {}

    def run_dir(self, plan: PlannedRun) -> RunDir:
        return RunDir(self.out / STUDY_RUNS / plan.name)

    def run_all(self, jobs: int, launcher: Any = None, data_root: Path | None = None) -> None:
        """Train what is not complete (here, in ``jobs`` processes, or as cluster jobs of ``launcher`` that
        train and test), then test what is not tested."""
        # Every folder is checked before anything runs: a recipe clash stops the study at once.
        states = {p.name: run_state(self.run_dir(p).path, p.config) for p in self.plans}
        todo = []
        for plan in self.plans:
            state, done = states[plan.name]
            if state == "complete":
                print(f"{self.heads[plan.name]}: training complete ({done} iterations), reused", flush=True)
            else:
                todo.append(plan)
        if launcher is not None:  # every grid point with work left is a cluster job: train, then test
            o = self.opts
            self.failed, tested = launcher.run(
                self.plans,
                self.out / STUDY_RUNS,
                data_root,
                self.heads,
                split=o["split"],
                checkpoint=o["checkpoint"],
                device=o["device"],
                report=o["report"],
                states=states,
            )
            self.tested = list(tested)
            self.trained, todo = [p.name for p in todo if p.name in tested], []
        if jobs > 1 and len(todo) > 1:
            self.train_parallel(todo, jobs)
        else:
            self.train_here(todo, states)
        for plan in self.plans:
            if plan.name not in self.failed and plan.name not in self.tested:
                self.test(plan)

    def test(self, plan: PlannedRun) -> None:
        o = self.opts
        run = self.run_dir(plan)
        test_precision = plan.config["train"]["precision"]
        results = run.results(o["split"], o["checkpoint"])
        # Reused only when they are the test of this very checkpoint on the whole split (ResultsDir.stale).
        stale = results.stale(
            run.checkpoint(o["checkpoint"]),
            split=o["split"],
            precision=test_precision,
            data_fingerprint=self.data_fingerprint,
        )
        if stale is None:
            print(f"{self.heads[plan.name]}: {o['split']} results up to date, reused", flush=True)
            return
        again = f", again: {stale}" if results.exists() else ""
        print(
            f"{self.heads[plan.name]}: testing on the {o['split']} split ({o['checkpoint']}.pt){again}",
            flush=True,
        )
        run_test(  # no viewer pages: a study's many runs would each write one per case
            run.path,
            data=self.dataset,
            split=o["split"],
            checkpoint=o["checkpoint"],
            precision=test_precision,
            device=o["device"],
            report=o["report"],
            progress=o["progress"],
            viewer=False,
        )
        self.tested.append(plan.name)

    def train_here(self, todo: Sequence[PlannedRun], states: dict[str, tuple[str, int]]) -> None:
        """Train (then test) ``todo`` one after the other in this process."""
        for plan in todo:
            state, done = states[plan.name]
            print(
                f"{self.heads[plan.name]}: training" + (f", resuming at iteration {done}" if done else ""),
                flush=True,
            )
            try:
                train(plan.config, self.dataset, self.run_dir(plan).path, resume=True)
            except TrainingDiverged as exc:
                # A diverged learning rate is a result of the sweep, not a reason to stop the study.
                print(f"{self.heads[plan.name]}: diverged: {exc}", flush=True)
                self.failed[plan.name] = f"diverged: {exc}"
                continue
            except StopSignal as stop:
                stop.runs = 1  # its last.pt is whole: the same command resumes it
                raise
            self.trained.append(plan.name)
            try:
                self.test(plan)
            except StopSignal as stop:
                stop.runs = 1
                raise

    def train_parallel(self, todo: Sequence[PlannedRun], jobs: int) -> None:
        """Train and test ``todo`` in child processes, ``jobs`` at once."""
        o = self.opts
        test_args = [
            "--checkpoint",
            o["checkpoint"],
            "--split",
            o["split"],
            "--device",
            o["device"],
            "--no-viewer",
        ]
        test_args += [] if o["report"] else ["--no-report"]
        n_slices = len(self.dataset.train_slices())
        pool = _ProcessPool(todo, self.out, jobs, n_slices, self.heads, test_args, o["progress"])
        self.failed = pool.run()
        self.trained = [p.name for p in todo if p.name not in self.failed]
        self.tested.extend(self.trained)


def run_study(
    data: str | Path,
    models: Sequence[str],
    out: str | Path,
    *,
    seeds: Sequence[int] = (DEFAULT_SEED,),
    sets: Sweep | Sequence[str] = (),
    preset: str | None = None,
    split: str | None = None,
    checkpoint: str = "last",
    precision: str | None = None,
    device: str = "auto",
    jobs: int = 1,
    report: bool = True,
    progress: bool = True,
    notes: Sequence[str] = (),
    launcher: Any = None,
    folds: int | None = None,
    baseline: str | None = None,
    pairs: str = "baseline",
) -> dict[str, Any]:
    """Train (or reuse / resume) and test every grid point, then aggregate (see :func:`collect`).

    ``jobs`` > 1 trains that many runs at once, each in its own ``organseg train`` process with
    ``cpu_count // jobs`` threads (unless ``train.threads`` is set), then tests them there too. Returns the
    comparison dict (as written to ``comparison.json``) with ``trained`` / ``tested`` listing the runs this
    call trained and tested. ``launcher`` (:class:`organseg.study.launcher.SubmititLauncher`): each grid
    point with work left runs as a cluster job instead (``jobs`` does not apply).

    ``folds`` K: K-fold cross-validation over the training subjects (``data.fold``, run folders
    ``..._fold<k>``); each fold's model is tested on its held-out subjects (the ``val`` split of the fold),
    and the statistics pool the out-of-fold predictions. ``split`` defaults to ``test`` (``val`` with folds).

    ``baseline`` and ``pairs``: which networks the paired statistics compare (:func:`collect`); checked
    against ``models`` before anything trains.
    """
    check_value("--jobs", jobs, WORKERS)
    check_comparisons(list(dict.fromkeys(models)), baseline, pairs)
    resolve_device(device)  # a device this machine lacks fails before any data are read
    sweep = sets if isinstance(sets, Sweep) else parse_sets(list(sets))
    out = Path(out)
    # The demo keeps its dataset in OUT/data: only what compare writes in OUT may not hold the data.
    check_output(out, {"--data": data}, folder=True, owned=STUDY_OUTPUTS)
    check_output_dir(out)
    split = _check_cv_options(split, checkpoint, folds)
    # With folds, the pool the folds divide (an nnU-Net folder without its own validation split).
    dataset = open_dataset(data, **layout_options(data, {"fold": 0} if folds else {}))
    if checkpoint == "best" and not folds and not dataset.case_ids("val"):
        # training writes best.pt only when it validates: found now, not after every run has trained
        raise ConfigError(
            f"--checkpoint best: {data} has no validation cases, so training writes no best.pt; "
            "use last (or epoch_N), or give the dataset a validation split"
        )
    plans = plan_runs(
        models,
        seeds,
        sweep,
        preset=preset,
        kind=dataset_kind(dataset.class_names),
        precision=precision,
        device=None if device == "auto" else device,
        data_root=Path(data).resolve(),
        folds=folds,
    )
    for plan in plans:
        check_network(plan.config)  # every network takes its img_size, before any run starts
    with folder_lock(out, "compare"):  # one writer per study folder; a run's lock is its trainer's
        if folds:
            write_splits(out, dataset, plans)
        elif not dataset.case_ids(split):
            raise DataError(f"{data}: the {split!r} split has no cases to test on")
        t0 = time.perf_counter()
        print(
            f"organseg compare: {len(plans)} run(s) in {out / STUDY_RUNS}: "
            f"{', '.join(models)} x seeds {list(seeds)}"
            + "".join(f" x {k} {list(v)}" for k, v in sweep.swept),
            flush=True,
        )
        study = _Study(
            out,
            plans,
            dataset,
            {
                "split": split,
                "checkpoint": checkpoint,
                "device": device,
                "report": report,
                "progress": progress,
            },
        )
        study.run_all(jobs, launcher, Path(data).resolve())
        failed = study.failed
        result = collect(
            out,
            [study.run_dir(p).path for p in plans if p.name not in failed],
            split=split,
            checkpoint=checkpoint,
            sweep_keys=sweep.keys,
            models=models,
            notes=notes,
            failed={str(out / STUDY_RUNS / k): v for k, v in failed.items()},
            baseline=baseline,
            pairs=pairs,
        )
        result["trained"], result["tested"] = study.trained, study.tested
        print(
            f"organseg compare: {len(study.trained)} run(s) trained, {len(study.tested)} tested, "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        return result


def _check_cv_options(split: str | None, checkpoint: str, folds: int | None) -> str:
    """The split to test on; with ``folds``, the held-out fold (``val``) and a checkpoint no held-out data
    chose."""
    if not folds:
        return split or "test"
    if split not in (None, "val"):
        raise ConfigError(
            f"--folds tests each fold's model on its held-out subjects (the fold's val split), not on "
            f"--split {split}; test the fold models as one ensemble: `organseg test STUDY --split {split}`"
        )
    if checkpoint == "best":
        raise ConfigError(
            "--folds with --checkpoint best: best.pt is chosen on the held-out fold, so its scores would not "
            "be held out; use last (or epoch_N)"
        )
    return "val"


def write_splits(out: Path, dataset: Any, plans: Sequence[PlannedRun]) -> list[dict[str, Any]]:
    """``OUT/splits.json``: every fold's training and held-out volumes and subjects (nnU-Net's
    ``splits_final.json`` keys ``train`` / ``val``, plus ``train_subjects`` / ``val_subjects``), as the runs
    will see them; also checks that each fold holds out at least one volume."""
    records: dict[int, dict[str, Any]] = {}
    for plan in plans:
        if plan.fold is None or plan.fold in records:
            continue
        view = apply_data_config(dataset, plan.config["data"])
        held = view.case_ids("val")
        if not held:
            raise DataError(f"{view.split_source('val')}: no volume to test on")
        records[plan.fold] = {
            "train": view.case_ids("train"),
            "val": held,
            "train_subjects": sorted({view.subject_of(c) for c in view.case_ids("train")}),
            "val_subjects": list(view.held_out),
        }
    folds = [records[k] for k in sorted(records)]
    atomic_write_text(out / SPLITS_FILE, json.dumps(folds, indent=1) + "\n")
    return folds


def _budget_seconds(cfg: dict) -> int | None:
    """The training seconds of a run that a time budget alone ends (no set length), else None."""
    t = cfg["train"]
    return math.ceil(60 * t["time_budget_min"]) if t["time_budget_min"] and not t["max_iterations"] else None


def _total_iterations(cfg: dict, n_slices: int) -> int:
    """For the progress bar: a run with a time budget and no set length is re-estimated once it has fitted its
    horizon (the bar reads the run's own records)."""
    return run_length(cfg["train"], math.ceil(n_slices / cfg["train"]["batch_size"]))


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class _ProcessPool:
    """Train and then test each plan as ``organseg train`` / ``organseg test`` processes, up to ``jobs`` runs
    at once (output in ``RUN_DIR/train.log``), with one progress bar over all training iterations.

    Separate processes with one or a few threads each use a small CPU far better than one process with every
    thread: PyTorch's per-operator thread synchronisation costs more than these small layers gain, and it
    collapses when another program competes for the cores.

    The bar counts iterations, or, when every run is ended by a time budget alone, training seconds: runs of
    different networks then have no common iteration count, and their budgets are known before any starts
    (an iteration count is known only once a run has fitted its horizon), so the ETA holds from the start."""

    def __init__(
        self,
        plans: Sequence[PlannedRun],
        out: Path,
        jobs: int,
        n_slices: int,
        heads: dict[str, str],
        test_args: list[str],
        progress: bool,
    ) -> None:
        self.out, self.jobs, self.heads, self.test_args, self.progress = out, jobs, heads, test_args, progress
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        # OMP_NUM_THREADS: the test processes' torch threads; PARENT_ENV: the runs stop if this process is
        # killed outright (SIGKILL, out of memory), when no clean-up of ours can stop them.
        self.env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), PARENT_ENV: str(os.getpid())}
        self.pending = list(plans)
        self.by_name = {p.name: p for p in plans}
        self.running: dict[str, tuple[str, subprocess.Popen, Any]] = {}  # name -> (phase, process, log)
        self.finished: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        budgets = {p.name: _budget_seconds(p.config) for p in plans}
        self.by_time = bool(plans) and None not in budgets.values()
        self.totals = (
            {n: b for n, b in budgets.items() if b is not None}
            if self.by_time
            else {p.name: _total_iterations(p.config, n_slices) for p in plans}
        )
        self.config_stamps: dict[str, int] = {}  # config.yaml's mtime when the bar last read it
        self.shown: tuple[int, str] = (0, "")

    def run(self) -> dict[str, str]:
        """Returns {run name: reason} of the runs that diverged; any other failure raises."""
        n = len(self.pending)
        desc = f"training {n} runs, {min(self.jobs, n)} at a time"
        bar = progress_bar(
            total=sum(self.totals.values()),
            desc=desc,
            unit="s" if self.by_time else "it",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                while self.pending or self.running:
                    while self.pending and len(self.running) < self.jobs:
                        self._start_training(self.pending.pop(0), Path(tmp))
                    time.sleep(1.0)
                    self._reap()
                    self._show(bar)
        except StopSignal as stop:  # SIGTERM, SIGHUP or SIGINT to this process (organseg.stopping)
            stop.runs = len(self.running)
            raise
        finally:
            bar.close()
            self._stop_children()
        return self.failed

    def _stop_children(self) -> None:
        """Stop the runs still going (the study was stopped, or another run failed): SIGTERM to each, up to
        :data:`STOP_WAIT_S` seconds in all for them to end, then SIGKILL. Their checkpoints are written
        atomically, so a run killed in the middle of one keeps its last whole ``last.pt`` and the same command
        resumes it."""
        for _, proc, _ in self.running.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_WAIT_S
        for _, proc, log in self.running.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self.running.clear()

    def _start(self, name: str, phase: str, cmd: list[str]) -> None:
        log = RunDir(self.out / STUDY_RUNS / name).process_log.open("a", encoding="utf-8")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.running[name] = (phase, proc, log)

    def _start_training(self, plan: PlannedRun, tmp: Path) -> None:
        run = RunDir(self.out / STUDY_RUNS / plan.name)
        cfg = copy.deepcopy(plan.config)
        cfg["train"]["progress"] = False  # runtime keys: the run stays the same run
        cfg["train"]["threads"] = cfg["train"]["threads"] or self.threads
        cfg_file = tmp / f"{plan.name}.yaml"
        cfg_file.write_text(to_yaml(cfg), encoding="utf-8")
        run.path.mkdir(parents=True, exist_ok=True)
        n = cfg["train"]["threads"]
        progress_write(
            f"{self.heads[plan.name]}: train, then test, in subprocesses ({n} thread(s)); "
            f"log {run.process_log}"
        )
        self._start(
            plan.name, "train", [*_ORGANSEG, "train", str(cfg_file), "--out", str(run.path), "--resume"]
        )

    def _reap(self) -> None:
        """Collect the processes that ended: a trained run goes on to its test; a diverged one is noted."""
        for name, (phase, proc, log) in list(self.running.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del self.running[name]
            run = RunDir(self.out / STUDY_RUNS / name)
            if code == 0 and phase == "train":
                self.finished[name] = self.totals[name]
                precision = self.by_name[name].config["train"]["precision"]  # tested as trained
                cmd = [*_ORGANSEG, "test", str(run.path), *self.test_args, "--precision", precision]
                self._start(name, "test", cmd)
            elif code == EXIT_DIVERGED and phase == "train":
                # A result of the sweep, the study goes on (the message is the process's last line).
                self.failed[name] = f"diverged: {_last_line(run.process_log)}"
                self.finished[name] = self.totals[name]
                progress_write(f"{self.heads[name]}: {self.failed[name]}")
            elif code != 0:
                raise OrgansegError(
                    f"{run.path}: {'training' if phase == 'train' else 'testing'} failed (exit code "
                    f"{code}): {_last_line(run.process_log) or 'no output'} (see {run.process_log})"
                )

    def _refit_totals(self, bar: Any) -> None:
        """A run with a time budget fits its horizon after its first iterations (config.yaml's
        ``train.fitted_iterations``; half-way once more): the bar's total follows it."""
        if self.by_time:  # the bar counts the budgets' seconds, known from the start
            return
        for name, (phase, _, _) in self.running.items():
            plan_t = self.by_name[name].config["train"]
            if phase != "train" or not plan_t["time_budget_min"] or plan_t["max_iterations"]:
                continue
            run = RunDir(self.out / STUDY_RUNS / name)
            try:
                stamp = run.config_file.stat().st_mtime_ns
                if self.config_stamps.get(name) == stamp:  # read again only when train rewrote it
                    continue
                fitted = run.config["train"].get("fitted_iterations")
            except (OrgansegError, OSError, KeyError, TypeError):
                continue  # not written yet, or being replaced
            self.config_stamps[name] = stamp
            if fitted and fitted != self.totals[name]:
                self.totals[name] = fitted
                # Runs still waiting with the same network and budget will fit about the same horizon: the
                # bar's total (and ETA) follows, instead of their max_epochs.
                model = self.by_name[name].config["model"]["name"]
                for plan in self.pending:
                    if plan.config["model"]["name"] == model and plan.config["train"] == plan_t:
                        self.totals[plan.name] = fitted
                bar.total = sum(self.totals.values())

    def _show(self, bar: Any) -> None:
        self._refit_totals(bar)
        runs = {n: RunDir(self.out / STUDY_RUNS / n) for n, r in self.running.items() if r[0] == "train"}
        if self.by_time:
            done = {n: int(run.last_train_seconds()) for n, run in runs.items()}
        else:
            done = {n: run.last_iteration() for n, run in runs.items()}
        now = sum(self.finished.values()) + sum(min(d, self.totals[n]) for n, d in done.items())
        unit = " s" if self.by_time else ""
        state = ", ".join(
            f"{n} {done[n]}/{self.totals[n]}{unit}" if phase == "train" else f"{n} testing"
            for n, (phase, _, _) in self.running.items()
        )
        if (now, state) != self.shown:  # redraw on change only: piped logs stay short
            self.shown = (now, state)
            bar.n = now
            bar.set_postfix_str(state, refresh=False)
            bar.refresh()


_ORGANSEG = [sys.executable, "-m", "organseg"]
