"""``organseg compare``: U-Net vs Swin-Unet over seeds and swept settings, one command.

A study is a grid: every model x seed x value of every swept ``--set key=v1,v2`` (several swept keys give
their cartesian product). Each grid point is an ordinary run folder under ``OUT/runs/`` with a stable name
(``swin_unet__seed1234__base_lr0.05``), trained with :func:`organseg.training.train` and tested with
:func:`organseg.evaluation.testing.run_test` (both metric protocols). A run whose final checkpoint is there
and whose configuration matches is not trained again; a partial one is resumed; fresh test results are reused.

The aggregation reads only files (``config.yaml`` and ``results/<split>_<checkpoint>/summary.json`` of each
run), so runs trained anywhere (one per GPU or machine, ``organseg train ... --out OUT/runs/NAME`` then
``organseg test OUT/runs/NAME --checkpoint last``) are collected with ``compare --collect``. What was swept is
read back from the configurations: the keys whose values differ between runs of the same network.

Outputs in ``OUT``::

    comparison.md    a verdict from the numbers, paper-format tables (mean ± std over seeds), published rows,
                     paired statistics per protocol, HD95 change, sweep table, cost table
    comparison.json  everything above, plus every run's numbers ("paired", "cost")
    comparison.csv   one row per (model, swept values, protocol, column), then the paired rows

The paired statistics (:mod:`organseg.evaluation.paired`) and the cost table (:mod:`organseg.evaluation.cost`)
are computed there; this module only calls them.
    comparison_organs.png, comparison_sweep_<key>.png
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from organseg import __version__
from organseg.device import resolve_device
from organseg.errors import ConfigError, DataError, OrgansegError
from organseg.fileio import (
    atomic_write_bytes,
    atomic_write_text,
    check_output,
    check_output_dir,
    read_json,
    read_yaml,
)
from organseg.values import SEED, WORKERS, check_value

RUNS_DIR = "runs"
PROTOCOLS = ("reference", "corrected")
DEFAULT_SEED = 1234  # the reference recipe's seed
# Keys that never make a sweep: the grid's own axes (nor do the runtime keys: where and how fast a run ran).
_NOT_SWEPT = {"model.name", "train.seed"}
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


# --------------------------------------------------------------------------------------------- the grid


def split_values(raw: str) -> list[str]:
    """``"0.01,0.05"`` -> ``["0.01", "0.05"]``; commas inside brackets or quotes belong to one value, so
    ``"[1,2,3,4],[2,4,8,16]"`` is two lists."""
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, None
    for ch in raw:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


@dataclass(frozen=True)
class Sweep:
    """``--set`` items split into fixed overrides (one value) and swept keys (several values, raw text)."""

    fixed: tuple[str, ...] = ()
    swept: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.swept]


def parse_sets(items: Sequence[str]) -> Sweep:
    """Parse ``--set key=v1[,v2,...]`` items; raises ConfigError naming the bad item."""
    from organseg.training.config import parse_override

    fixed, swept, seen = [], [], set()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set {item!r}: expected key=value or key=v1,v2,..., e.g. train.base_lr=0.01,0.05"
            )
        if key in _NOT_SWEPT:
            flag = "--models" if key == "model.name" else "--seeds"
            raise ConfigError(f"--set {item!r}: use {flag} for {key}")
        if key in seen:
            raise ConfigError(f"--set {item!r}: {key} is set twice; give all its values in one --set")
        seen.add(key)
        values = split_values(raw)
        if any(v == "" for v in values):
            raise ConfigError(f"--set {item!r}: an empty value (stray comma?)")
        parsed = [parse_override(f"{key}={v}")[1] for v in values]
        if len({json.dumps(p, sort_keys=True, default=str) for p in parsed}) != len(parsed):
            raise ConfigError(f"--set {item!r}: a value is repeated")
        if len(values) == 1:
            fixed.append(f"{key}={values[0]}")
        else:
            swept.append((key, tuple(values)))
    return Sweep(tuple(fixed), tuple(swept))


def parse_seeds(items: Sequence[str] | None) -> list[int]:
    """``["1234,1", "2"]`` -> ``[1234, 1, 2]``; default the reference seed."""
    if not items:
        return [DEFAULT_SEED]
    seeds: list[int] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            seeds.append(check_value("--seeds", part, SEED))
    if not seeds:
        raise ConfigError("--seeds: no seed given")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: a seed is repeated ({seeds})")
    return seeds


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The last part of each swept key (``base_lr``), unless two keys share it (then the whole key)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k.replace(".", "-")) for k, s in zip(keys, last, strict=True)}


def _safe(text: str) -> str:
    return _SAFE.sub("-", text).strip("-") or "x"


def run_name(model: str, seed: int, sweep: Sequence[tuple[str, str]] = ()) -> str:
    """The run folder name: ``swin_unet__seed1234__base_lr0.05`` (sweep = (key, raw value) pairs)."""
    short = _short_keys([k for k, _ in sweep])
    return "__".join([model, f"seed{seed}", *(f"{short[k]}{_safe(v)}" for k, v in sweep)])


def preset_for(template: str | None, model: str, kind: str | None) -> str:
    """The preset (name or YAML path) of ``model``: ``template`` with ``{model}`` filled in, or the network's
    preset for the dataset (``unet_acdc``); datasets that are neither Synapse nor ACDC get the Synapse
    recipe."""
    if template is None:
        return f"{model}_{kind or 'synapse'}"
    try:
        return template.format(model=model)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"--preset {template!r}: only {{model}} may be filled in ({exc})") from None


@dataclass(frozen=True)
class PlannedRun:
    """One grid point: its folder name, network, seed, swept values (raw text) and resolved configuration."""

    name: str
    model: str
    seed: int
    sweep: tuple[tuple[str, str], ...]
    config: dict = field(compare=False, hash=False)


def plan_runs(
    models: Sequence[str],
    seeds: Sequence[int],
    sets: Sweep,
    *,
    preset: str | None = None,
    kind: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    data_root: str | Path | None = None,
) -> list[PlannedRun]:
    """Expand the grid (model-major, then swept values, then seeds) into resolved configurations."""
    from organseg.models import list_models
    from organseg.training.config import apply_overrides, load_config, resolve_config

    if not models:
        raise ConfigError("--models: name at least one network")
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ConfigError(f"--models: unknown network(s) {unknown}; available: {', '.join(list_models())}")
    if len(set(models)) != len(models):
        raise ConfigError(f"--models: a network is repeated ({list(models)})")
    plans = []
    for model in models:
        name = preset_for(preset, model, kind)
        base = load_config(name)
        preset_model = (base.get("model") or {}).get("name")
        if preset_model not in (None, model):
            if (base.get("model") or {}).get("args"):
                raise ConfigError(
                    f"preset {name!r} sets model.args for {preset_model!r}, not {model!r}: "
                    "use a preset template with {model} (e.g. --preset '{model}_synapse')"
                )
            base = {**base, "model": {**base["model"], "name": model, "args": {}}}
        for values in itertools.product(*(vals for _, vals in sets.swept)):
            sweep = tuple(zip(sets.keys, values, strict=True))
            for seed in seeds:
                items = [
                    *sets.fixed,
                    *(f"{k}={v}" for k, v in sweep),
                    f"model.name={model}",
                    f"train.seed={seed}",
                ]
                if precision:
                    items.append(f"train.precision={precision}")
                if device:
                    items.append(f"train.device={device}")
                raw = apply_overrides(base, items)
                cfg = resolve_config(raw, data_root)
                plans.append(PlannedRun(run_name(model, seed, sweep), model, seed, sweep, cfg))
    names = [p.name for p in plans]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(
            f"two grid points get the same run folder name ({clash[0]}); make the --set values distinct"
        )
    return plans


# --------------------------------------------------------------------------------------- one run's state


def run_state(run_dir: Path, cfg: dict) -> tuple[str, int]:
    """("new" | "partial" | "complete", iterations done) of a run folder for the configuration ``cfg``.

    Raises ConfigError when the folder holds a run of another configuration (runtime keys aside), so a
    study never mixes recipes under one name.
    """
    from organseg.checkpoint import read_checkpoint
    from organseg.training.config import config_differences

    last = run_dir / "checkpoints" / "last.pt"
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
    target = cfg["train"]["max_iterations"] or cfg["train"]["max_epochs"] * ipe
    return ("complete" if done >= target else "partial"), done


def _fresh_results(folder: Path, checkpoint: Path, precision: str) -> bool:
    """Whether ``folder/summary.json`` was computed from this very checkpoint file at this precision."""
    summary = folder / "summary.json"
    if not summary.is_file() or not checkpoint.is_file():
        return False
    if summary.stat().st_mtime < checkpoint.stat().st_mtime:
        return False
    try:
        s = read_json(summary, "test summary")
    except DataError:
        return False
    return s.get("precision") == precision and Path(str(s.get("checkpoint"))).name == checkpoint.name


# ---------------------------------------------------------------------------------------- the whole study


def run_study(
    data: str | Path,
    models: Sequence[str],
    out: str | Path,
    *,
    seeds: Sequence[int] = (DEFAULT_SEED,),
    sets: Sweep | Sequence[str] = (),
    preset: str | None = None,
    split: str = "test",
    checkpoint: str = "last",
    precision: str | None = None,
    device: str = "auto",
    jobs: int = 1,
    report: bool = True,
    progress: bool = True,
    notes: Sequence[str] = (),
    launcher: Any = None,
) -> dict[str, Any]:
    """Train (or reuse / resume) and test every grid point, then aggregate (see :func:`collect`).

    ``jobs`` > 1 trains that many runs at once, each in its own ``organseg train`` process with
    ``cpu_count // jobs`` threads (unless ``train.threads`` is set), then tests them here. Returns the
    comparison dict (as written to ``comparison.json``) with ``trained`` / ``tested`` listing the runs this
    call trained and tested. ``launcher`` (:class:`organseg.study.launcher.SubmititLauncher`): each grid
    point with work left runs as a cluster job instead (``jobs`` does not apply).
    """
    from organseg.data import open_dataset
    from organseg.evaluation.tables import dataset_kind
    from organseg.evaluation.testing import run_test
    from organseg.training import train
    from organseg.training.loop import TrainingDiverged, check_network

    check_value("--jobs", jobs, WORKERS)
    resolve_device(device)  # a device this machine lacks fails before any data are read
    sweep = sets if isinstance(sets, Sweep) else parse_sets(list(sets))
    out = Path(out)
    # The demo keeps its dataset in OUT/data: only what compare writes in OUT may not hold the data.
    check_output(out, {"--data": data}, folder=True, owned=(RUNS_DIR, "comparison.md", "comparison.json",
                                                            "comparison.csv"))  # fmt: skip
    check_output_dir(out)
    dataset = open_dataset(data)
    data_root = Path(data).resolve()
    kind = dataset_kind(dataset.class_names)
    plans = plan_runs(
        models, seeds, sweep, preset=preset, kind=kind, precision=precision,
        device=None if device == "auto" else device, data_root=data_root,
    )  # fmt: skip
    for plan in plans:
        check_network(plan.config)  # every network takes its img_size, before any run starts
    if not dataset.case_ids(split):
        raise DataError(f"{data}: the {split!r} split has no cases to test on")
    t0 = time.perf_counter()
    print(
        f"organseg compare: {len(plans)} run(s) in {out / RUNS_DIR}: "
        f"{', '.join(models)} x seeds {list(seeds)}" + "".join(f" x {k} {list(v)}" for k, v in sweep.swept),
        flush=True,
    )
    # Every folder is checked before anything runs: a recipe clash stops the study at once.
    states = {p.name: run_state(out / RUNS_DIR / p.name, p.config) for p in plans}
    heads = {p.name: f"[{n}/{len(plans)}] {p.name}" for n, p in enumerate(plans, start=1)}
    trained: list[str] = []
    tested: list[str] = []
    failed: dict[str, str] = {}

    def test(plan: PlannedRun) -> None:
        run_dir = out / RUNS_DIR / plan.name
        test_precision = plan.config["train"]["precision"]
        ckpt_file = run_dir / "checkpoints" / f"{checkpoint}.pt"
        if _fresh_results(run_dir / "results" / f"{split}_{checkpoint}", ckpt_file, test_precision):
            print(f"{heads[plan.name]}: {split} results up to date, reused", flush=True)
            return
        print(f"{heads[plan.name]}: testing on the {split} split ({checkpoint}.pt)", flush=True)
        run_test(  # no viewer pages: a study's many runs would each write one per case
            run_dir, data=dataset, split=split, checkpoint=checkpoint, precision=test_precision,
            device=device, report=report, progress=progress, viewer=False,
        )  # fmt: skip
        tested.append(plan.name)

    todo = []
    for plan in plans:
        state, done = states[plan.name]
        if state == "complete":
            print(f"{heads[plan.name]}: training complete ({done} iterations), reused", flush=True)
        else:
            todo.append(plan)
    if launcher is not None:  # every grid point with work left is a cluster job: train, then test
        failed, tested = launcher.run(plans, out / RUNS_DIR, data_root, heads, split=split,
                                      checkpoint=checkpoint, device=device, report=report)  # fmt: skip
        trained, todo = [p.name for p in todo if p.name in tested], []
    if jobs > 1 and len(todo) > 1:
        test_args = ["--checkpoint", checkpoint, "--split", split, "--device", device, "--no-viewer"]
        test_args += [] if report else ["--no-report"]
        failed = _run_parallel(todo, out, jobs, len(dataset.train_slices()), heads, test_args, progress)
        trained = [p.name for p in todo if p.name not in failed]
        tested.extend(trained)
    else:
        for plan in todo:
            state, done = states[plan.name]
            print(
                f"{heads[plan.name]}: training" + (f", resuming at iteration {done}" if done else ""),
                flush=True,
            )
            try:
                train(plan.config, dataset, out / RUNS_DIR / plan.name, resume=True)
            except TrainingDiverged as exc:
                # A diverged learning rate is a result of the sweep, not a reason to stop the study.
                print(f"{heads[plan.name]}: diverged: {exc}", flush=True)
                failed[plan.name] = f"diverged: {exc}"
                continue
            trained.append(plan.name)
            test(plan)
    for plan in plans:
        if plan.name not in failed and plan.name not in tested:
            test(plan)
    result = collect(
        out, [out / RUNS_DIR / p.name for p in plans if p.name not in failed],
        split=split, checkpoint=checkpoint, sweep_keys=sweep.keys, models=models, notes=notes,
        failed={str(out / RUNS_DIR / k): v for k, v in failed.items()},
    )  # fmt: skip
    result["trained"], result["tested"] = trained, tested
    print(
        f"organseg compare: {len(trained)} run(s) trained, {len(tested)} tested, "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return result


def _total_iterations(cfg: dict, n_slices: int) -> int:
    t = cfg["train"]
    return t["max_iterations"] or t["max_epochs"] * math.ceil(n_slices / t["batch_size"])


def _iterations_done(run_dir: Path) -> int:
    """The last training iteration in ``metrics.jsonl`` (its tail only: the log can be long)."""
    path = run_dir / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the seek, or one being written
        if isinstance(rec, dict) and "iter" in rec:
            return int(rec["iter"])
    return 0


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _run_parallel(
    plans: Sequence[PlannedRun],
    out: Path,
    jobs: int,
    n_slices: int,
    heads: dict[str, str],
    test_args: list[str],
    progress: bool,
) -> dict[str, str]:
    """Train and then test each of ``plans`` as ``organseg train`` / ``organseg test`` processes, up to
    ``jobs`` runs at once (output in ``RUN_DIR/train.log``). Returns {run name: reason} of the runs that
    diverged; any other failure raises.

    Separate processes with one or a few threads each use a small CPU far better than one process with every
    thread: PyTorch's per-operator thread synchronisation costs more than these small layers gain, and it
    collapses when another program competes for the cores."""
    import copy
    import os
    import subprocess
    import sys
    import tempfile

    from organseg.progress import progress_bar, progress_write
    from organseg.training.config import to_yaml

    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # the test processes' torch threads
    organseg = [sys.executable, "-m", "organseg"]
    pending = list(plans)
    by_name = {p.name: p for p in plans}
    running: dict[str, tuple[str, subprocess.Popen, Any]] = {}  # name -> (phase, process, log file)
    finished: dict[str, int] = {}
    failed: dict[str, str] = {}
    totals = {p.name: _total_iterations(p.config, n_slices) for p in plans}
    desc = f"training {len(plans)} runs, {min(jobs, len(plans))} at a time"
    bar = progress_bar(
        total=sum(totals.values()), desc=desc, unit="it", disable=not progress, dynamic_ncols=True
    )

    shown: tuple[int, str] = (0, "")

    def start(name: str, phase: str, cmd: list[str]) -> None:
        log = (out / RUNS_DIR / name / "train.log").open("a", encoding="utf-8")
        running[name] = (phase, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)

    try:
        with tempfile.TemporaryDirectory() as tmp:
            while pending or running:
                while pending and len(running) < jobs:
                    plan = pending.pop(0)
                    run_dir = out / RUNS_DIR / plan.name
                    cfg = copy.deepcopy(plan.config)
                    cfg["train"]["progress"] = False  # runtime keys: the run stays the same run
                    cfg["train"]["threads"] = cfg["train"]["threads"] or threads
                    cfg_file = Path(tmp) / f"{plan.name}.yaml"
                    cfg_file.write_text(to_yaml(cfg), encoding="utf-8")
                    run_dir.mkdir(parents=True, exist_ok=True)
                    n = cfg["train"]["threads"]
                    progress_write(f"{heads[plan.name]}: train, then test, in subprocesses ({n} thread(s)); "
                               f"log {run_dir / 'train.log'}")  # fmt: skip
                    start(
                        plan.name,
                        "train",
                        [*organseg, "train", str(cfg_file), "--out", str(run_dir), "--resume"],
                    )
                time.sleep(1.0)
                for name, (phase, proc, log) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    log.close()
                    del running[name]
                    run_dir = out / RUNS_DIR / name
                    if code == 0 and phase == "train":
                        finished[name] = totals[name]
                        precision = by_name[name].config["train"]["precision"]  # tested as trained
                        start(
                            name,
                            "test",
                            [*organseg, "test", str(run_dir), *test_args, "--precision", precision],
                        )
                    elif (
                        code == 2
                        and phase == "train"
                        and "training stopped" in _last_line(run_dir / "train.log")
                    ):
                        # TrainingDiverged, as the CLI prints it: a result of the sweep, the study goes on.
                        failed[name] = f"diverged: {_last_line(run_dir / 'train.log')}"
                        finished[name] = totals[name]
                        progress_write(f"{heads[name]}: {failed[name]}")
                    elif code != 0:
                        raise OrgansegError(
                            f"{run_dir}: {'training' if phase == 'train' else 'testing'} failed (exit code "
                            f"{code}): {_last_line(run_dir / 'train.log') or 'no output'} "
                            f"(see {run_dir / 'train.log'})"
                        )
                done = {
                    n: _iterations_done(out / RUNS_DIR / n) for n, r in running.items() if r[0] == "train"
                }
                now = sum(finished.values()) + sum(min(d, totals[n]) for n, d in done.items())
                state = ", ".join(
                    f"{n} {done[n]}/{totals[n]}" if phase == "train" else f"{n} testing"
                    for n, (phase, _, _) in running.items()
                )
                if (now, state) != shown:  # redraw on change only: piped logs stay short
                    shown = (now, state)
                    bar.n = now
                    bar.set_postfix_str(state, refresh=False)
                    bar.refresh()
    finally:
        bar.close()
        for _, proc, log in running.values():  # interrupted, or another run failed
            proc.terminate()
            proc.wait()
            log.close()
    return failed


# -------------------------------------------------------------------------------------------- aggregation


@dataclass
class RunResult:
    """What the aggregation needs from one run folder."""

    name: str
    run_dir: Path
    model: str
    seed: int
    config: dict
    summary: dict
    results_dir: Path
    sweep: dict[str, Any] = field(default_factory=dict)


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path, "run configuration")
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise DataError(f"{path}: not a run configuration (no model section)")
    return data


def _read_summary(path: Path) -> dict:
    data = read_json(path, "test summary")
    if not all(p in data for p in (*PROTOCOLS, "class_names")):
        raise DataError(f"{path}: not an organseg test summary (no reference/corrected/class_names)")
    return data


def _flat(cfg: dict) -> dict[str, Any]:
    from organseg.training.config import flatten

    return flatten(cfg)


def _freeze(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def infer_sweep_keys(configs: Sequence[tuple[str, dict]]) -> list[str]:
    """Keys whose values differ between runs of the same network: what a study swept. ``configs`` are
    (model name, config) pairs; seeds, the model and runtime keys never count."""
    from organseg.training.config import RUNTIME_KEYS

    by_model: dict[str, list[dict[str, Any]]] = {}
    for model, cfg in configs:
        by_model.setdefault(model, []).append(_flat(cfg))
    keys: list[str] = []
    for flats in by_model.values():
        order = list(dict.fromkeys(k for f in flats for k in f))
        for k in order:
            if k in _NOT_SWEPT or k in RUNTIME_KEYS or k in keys:
                continue
            if len({_freeze(f.get(k)) for f in flats}) > 1:
                keys.append(k)
    return keys


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; None for a single value) of the defined values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": float(np.mean(vals)),
        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        "n": len(vals),
    }


def _protocol_values(summary: dict, protocol: str, cols: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """A run's (mean, per-column) Dice and HD95 under one protocol; Dice as a fraction."""
    s = summary[protocol]
    names = summary["class_names"]
    per = s["per_class"]
    keys = ("mean_nsd", "mean_assd", "nsd_tolerance") if protocol == "corrected" else ()
    surface = {k: s.get(k) for k in keys}
    return {
        "mean_dice": s.get("mean_dice"),
        "mean_hd95": s.get("mean_hd95"),
        "hd95_unit": s.get("hd95_unit"),
        **surface,
        "columns": {
            t: {"dice": per[names[i]].get("dice"), "hd95": per[names[i]].get("hd95")} for t, i in cols
        },
    }


def _label(model: str, sweep: dict[str, Any], short: dict[str, str]) -> str:
    return model + "".join(f", {short[k]}={_fmt_value(v)}" for k, v in sweep.items())


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _synthetic(summary: dict, cfg: dict) -> bool:
    for root in (summary.get("data"), (cfg.get("data") or {}).get("root")):
        if root and (Path(str(root)) / "SYNTHETIC.txt").is_file():
            return True
    return False


def find_runs(out: str | Path) -> list[Path]:
    """Run folders (holding ``config.yaml``) under ``OUT/runs``."""
    base = Path(out) / RUNS_DIR
    return sorted(p for p in base.iterdir() if (p / "config.yaml").is_file()) if base.is_dir() else []


def collect(
    out: str | Path,
    run_dirs: Sequence[str | Path] | None = None,
    *,
    split: str = "test",
    checkpoint: str = "last",
    sweep_keys: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    notes: Sequence[str] = (),
    failed: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Aggregate finished run folders and write ``OUT/comparison.{md,json,csv}`` and the figures.

    ``run_dirs``: default every run folder in ``OUT/runs``. A run without
    ``results/<split>_<checkpoint>/summary.json`` is listed as skipped (with the command that tests it).
    ``sweep_keys``: default inferred (:func:`infer_sweep_keys`). ``models``: keep / order these networks.
    """
    from organseg.evaluation.tables import PUBLISHED, columns, dataset_kind

    out = check_output_dir(out)
    dirs = [Path(d) for d in run_dirs] if run_dirs is not None else find_runs(out)
    if not dirs:
        raise DataError(f"{out / RUNS_DIR}: no run folders (with config.yaml) to collect")
    runs: list[RunResult] = []
    skipped = [{"run_dir": k, "reason": v} for k, v in (failed or {}).items()]
    for d in dirs:
        if not (d / "config.yaml").is_file():
            raise DataError(f"{d}: not a run folder (no config.yaml)")
        cfg = _read_yaml(d / "config.yaml")
        model = str(cfg["model"].get("name"))
        if models is not None and model not in models:
            continue
        folder = d / "results" / f"{split}_{checkpoint}"
        if not (folder / "summary.json").is_file():
            reason = (
                f"no {folder / 'summary.json'}: test it with "
                f"`organseg test {d} --checkpoint {checkpoint} --split {split}`"
            )
            print(f"organseg compare: skipping {d.name}: {reason}", flush=True)
            skipped.append({"run_dir": str(d), "reason": reason})
            continue
        seed = (cfg.get("train") or {}).get("seed", DEFAULT_SEED)
        runs.append(
            RunResult(d.name, d, model, int(seed), cfg, _read_summary(folder / "summary.json"), folder)
        )
    if not runs:
        raise DataError(
            f"{out}: none of the {len(dirs)} run folder(s) has {split}_{checkpoint} results "
            f"(test them with `organseg test RUN_DIR --checkpoint {checkpoint} --split {split}`)"
        )
    class_names = runs[0].summary["class_names"]
    for r in runs[1:]:
        if [str(n).lower() for n in r.summary["class_names"]] != [str(n).lower() for n in class_names]:
            raise DataError(
                f"{r.results_dir / 'summary.json'}: classes {r.summary['class_names']} differ from "
                f"{runs[0].name}'s {class_names}: these runs were tested on different datasets"
            )
    keys = (
        list(sweep_keys) if sweep_keys is not None else infer_sweep_keys([(r.model, r.config) for r in runs])
    )
    for r in runs:
        flat = _flat(r.config)
        r.sweep = {k: flat.get(k) for k in keys}
    if models is not None:
        model_order = list(models)
    else:  # the U-Net first, as in the papers' tables: it is the baseline of the HD95 change
        model_order = sorted(dict.fromkeys(r.model for r in runs), key=lambda m: m != "unet")
    model_order = [m for m in model_order if any(r.model == m for r in runs)]
    cols = columns(class_names)
    kind = dataset_kind(class_names)
    published = PUBLISHED.get(kind) if kind else None
    short = _short_keys(keys)

    # Groups: one per (model, swept values), in model order then the order values first appear.
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for m in model_order:
        for r in runs:
            if r.model == m:
                groups.setdefault((m, _freeze(r.sweep)), []).append(r)
    group_list = []
    for (m, _), members in groups.items():
        members.sort(key=lambda r: r.seed)
        g: dict[str, Any] = {
            "model": m,
            "sweep": dict(members[0].sweep),
            "label": _label(m, members[0].sweep, short),
            "n": len(members),
            "seeds": [r.seed for r in members],
            "runs": [r.name for r in members],
        }
        for p in PROTOCOLS:
            vals = [_protocol_values(r.summary, p, cols) for r in members]
            g[p] = {
                "mean_dice": _stats([v["mean_dice"] for v in vals]),
                "mean_hd95": _stats([v["mean_hd95"] for v in vals]),
                "hd95_unit": vals[0]["hd95_unit"],
                **(
                    {
                        "mean_nsd": _stats([v["mean_nsd"] for v in vals]),
                        "mean_assd": _stats([v["mean_assd"] for v in vals]),
                        "nsd_tolerance": vals[0]["nsd_tolerance"],
                    }
                    if p == "corrected"
                    else {}
                ),
                "columns": {
                    t: {
                        "dice": _stats([v["columns"][t]["dice"] for v in vals]),
                        "hd95": _stats([v["columns"][t]["hd95"] for v in vals]),
                    }
                    for t, _ in cols
                },
            }
        group_list.append(g)

    baseline = "unet" if "unet" in model_order else model_order[0]
    relative = _relative_changes(group_list, baseline)
    pub = None
    if published:
        rows = published["rows"]
        pub = {"source": published["source"], "rows": rows, "model_row": published["model_row"]}
        base_row = rows.get(published["model_row"].get(baseline, ""), {})
        pub["relative_hd95"] = {
            m: (rows[r]["HD95"] - base_row["HD95"]) / base_row["HD95"]
            for m, r in published["model_row"].items()
            if m != baseline and m in model_order and base_row.get("HD95") and rows[r].get("HD95") is not None
        }
    synthetic = any(_synthetic(r.summary, r.config) for r in runs)
    from organseg.evaluation.cost import group_cost, run_cost
    from organseg.evaluation.paired import study_paired

    by_name = {r.name: r for r in runs}
    paired, paired_settings, paired_notes = study_paired(
        group_list, {r.name: r.results_dir for r in runs}, class_names, cols
    )
    cost = [
        group_cost(
            g["model"],
            g["label"],
            g["sweep"],
            [
                run_cost(by_name[n].run_dir, by_name[n].results_dir, by_name[n].config, len(class_names))
                for n in g["runs"]
            ],
        )
        for g in group_list
    ]
    comparison: dict[str, Any] = {
        "organseg": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "split": split,
        "checkpoint": checkpoint,
        "dataset": {
            "kind": kind,
            "class_names": list(class_names),
            "columns": [t for t, _ in cols],
            "synthetic": synthetic,
            "data": sorted({str(r.summary.get("data")) for r in runs}),
        },
        "models": model_order,
        "baseline": baseline,
        "sweep_keys": keys,
        "runs": [_run_record(r, cols) for r in runs],
        "skipped": skipped,
        "groups": group_list,
        "relative": relative,
        "paired": paired,
        "paired_settings": paired_settings,
        "cost": cost,
        "published": pub,
        "notes": [*notes, *paired_notes],
    }
    comparison["figures"] = _write_figures(out, comparison)
    from organseg.study.efficiency import add_efficiency

    add_efficiency(out, comparison)  # DSC vs data fraction, learning curves: figures and "efficiency"
    write_comparison(out, comparison)
    return comparison


def _run_record(r: RunResult, cols: Sequence[tuple[str, int]]) -> dict[str, Any]:
    train = {}
    path = r.run_dir / "summary.json"
    if path.is_file():
        try:
            train = read_json(path, "training summary")
        except DataError:
            train = {}
    return {
        "name": r.name,
        "run_dir": str(r.run_dir),
        "model": r.model,
        "seed": r.seed,
        "sweep": r.sweep,
        "iterations": train.get("iterations"),
        "train_seconds": train.get("train_seconds"),
        "stopped": train.get("stopped"),
        "results_dir": str(r.results_dir),
        "cases": r.summary.get("cases"),
        **{p: _protocol_values(r.summary, p, cols) for p in PROTOCOLS},
    }


def _relative_changes(groups: Sequence[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Each network against the baseline at the same swept values: the seed write-up's relative HD95
    change ``(HD_other - HD_base) / HD_base`` and the DSC difference in points, per protocol."""
    out = []
    base = {_freeze(g["sweep"]): g for g in groups if g["model"] == baseline}
    for g in groups:
        b = base.get(_freeze(g["sweep"]))
        if g["model"] == baseline or b is None:
            continue
        rec: dict[str, Any] = {"model": g["model"], "baseline": baseline, "sweep": g["sweep"]}
        for p in PROTOCOLS:
            hd, hd0 = g[p]["mean_hd95"]["mean"], b[p]["mean_hd95"]["mean"]
            d, d0 = g[p]["mean_dice"]["mean"], b[p]["mean_dice"]["mean"]
            rec[p] = {
                "hd95_change": None if hd is None or not hd0 else (hd - hd0) / hd0,
                "dice_points": None if d is None or d0 is None else 100.0 * (d - d0),
            }
        out.append(rec)
    return out


# ------------------------------------------------------------------------------------------------ writing


def _pm(stat: dict[str, Any], scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "–"
    text = f"{stat['mean'] * scale:.2f}"
    return text + (f" ± {stat['std'] * scale:.2f}" if stat["std"] is not None else "")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.1f}%"


def comparison_markdown(c: dict[str, Any]) -> str:
    """``comparison.md``: the paper-format tables and everything else a reader needs."""
    # Imported here: scipy.stats (under paired) costs the CLI's start-up a noticeable moment.
    from organseg.evaluation.cost import cost_markdown
    from organseg.evaluation.paired import paired_markdown, verdict_markdown

    ds = c["dataset"]
    titles = ds["columns"]
    lines = ["# organseg comparison" + (" (SYNTHETIC DATA)" if ds["synthetic"] else ""), ""]
    if ds["synthetic"]:
        lines += [
            "> **SYNTHETIC DATA.** These numbers come from organseg's phantom generator, not from patients. "
            "They show that the pipeline works; they say nothing about the networks on real CT. The "
            "published rows are from real Synapse CT and are shown for the table format only.",
            "",
        ]
    lines += [
        f"{len(c['runs'])} run(s), {c['split']} split, checkpoint `{c['checkpoint']}.pt`; values are "
        "mean ± sample standard deviation over seeds (n = number of seeds). DSC in %.",
        "",
    ]
    for note in c.get("notes", []):
        lines += [note, ""]
    lines += verdict_markdown(c.get("paired") or [], c.get("cost") or [], c.get("paired_settings") or {})
    pub = c.get("published")
    for p in PROTOCOLS:
        unit = c["groups"][0][p]["hd95_unit"] if c["groups"] else "voxel"
        title = {
            "reference": "Reference protocol (the papers' test.py; comparable with the published rows)",
            "corrected": "Corrected protocol (absent organs not scored, missed organs count 0)",
        }[p]
        lines += [f"## {title}", "", f"HD95 in {'voxels' if unit == 'voxel' else unit}.", ""]
        lines.append("| Method | n | DSC | HD95 | " + " | ".join(titles) + " |")
        lines.append("|---" * (len(titles) + 4) + "|")
        if pub and p == "reference":
            for name, row in pub["rows"].items():
                cells = ["–" if row.get(t) is None else f"{row[t]:.2f}" for t in ["DSC", "HD95", *titles]]
                lines.append(f"| {name} (paper) | | " + " | ".join(cells) + " |")
        for g in c["groups"]:
            s = g[p]
            cells = [_pm(s["mean_dice"], 100), _pm(s["mean_hd95"])]
            cells += [_pm(s["columns"][t]["dice"], 100) for t in titles]
            lines.append(f"| {g['label']} | {g['n']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Per-organ HD95:",
            "",
            "| Method | " + " | ".join(titles) + " |",
            "|---" * (len(titles) + 1) + "|",
        ]
        for g in c["groups"]:
            lines.append(
                f"| {g['label']} | " + " | ".join(_pm(g[p]["columns"][t]["hd95"]) for t in titles) + " |"
            )
        lines.append("")
        if p == "corrected" and any(g[p].get("mean_nsd", {}).get("n") for g in c["groups"]):
            lines += _surface_lines(c)
        lines += paired_markdown(c.get("paired") or [], p, unit, c.get("paired_settings") or {})
    if c["relative"]:
        lines += [
            "## Swin-Unet against U-Net" if c["baseline"] == "unet" else f"## Against {c['baseline']}",
            "",
            f"Relative HD95 change (HD95_model − HD95_{c['baseline']}) / HD95_{c['baseline']} of the mean "
            "over seeds (negative: smaller boundary errors), and the DSC difference in points.",
            "",
            "| Model | vs | swept | HD95 change (reference) | HD95 change (corrected) | ΔDSC (reference) |",
            "|---|---|---|---|---|---|",
        ]
        for r in c["relative"]:
            sw = ", ".join(f"{k}={_fmt_value(v)}" for k, v in r["sweep"].items()) or "–"
            d = r["reference"]["dice_points"]
            lines.append(
                f"| {r['model']} | {r['baseline']} | {sw} | {_pct(r['reference']['hd95_change'])} | "
                f"{_pct(r['corrected']['hd95_change'])} | {'–' if d is None else f'{d:+.2f}'} |"
            )
        if pub and pub.get("relative_hd95"):
            pubs = ", ".join(f"{m} {_pct(v)}" for m, v in pub["relative_hd95"].items())
            lines += [
                "",
                f"Published (Swin-Unet paper): {pubs}. The seed reproduction write-up measured −14%.",
            ]
        lines.append("")
    if c["sweep_keys"]:
        lines += [
            f"## Sweep: {', '.join(c['sweep_keys'])}",
            "",
            "Mean DSC (%) and HD95, reference protocol, mean ± std over seeds.",
            "",
        ]
        models = c["models"]
        lines.append(
            "| "
            + " | ".join(c["sweep_keys"])
            + " | "
            + " | ".join(f"{m} DSC | {m} HD95" for m in models)
            + " |"
        )
        lines.append("|---" * (len(c["sweep_keys"]) + 2 * len(models)) + "|")
        combos = list(dict.fromkeys(_freeze(g["sweep"]) for g in c["groups"]))
        for combo in combos:
            sweep = json.loads(combo)
            cells = [_fmt_value(sweep.get(k)) for k in c["sweep_keys"]]
            for m in models:
                g = next((g for g in c["groups"] if g["model"] == m and _freeze(g["sweep"]) == combo), None)
                cells += (
                    ["–", "–"]
                    if g is None
                    else [_pm(g["reference"]["mean_dice"], 100), _pm(g["reference"]["mean_hd95"])]
                )
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += cost_markdown(c.get("cost") or [])
    if c.get("figures"):
        lines += ["## Figures", ""]
        for name, path in c["figures"].items():
            lines += [f"![{name}]({path})", ""]
    lines += [
        "## Runs",
        "",
        "| run | model | seed | iterations | train s | DSC (ref) | HD95 (ref) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in c["runs"]:
        d, h = r["reference"]["mean_dice"], r["reference"]["mean_hd95"]
        lines.append(
            f"| `{r['name']}` | {r['model']} | {r['seed']} | {r['iterations'] or '–'} | "
            f"{r['train_seconds'] or '–'} | {'–' if d is None else f'{100 * d:.2f}'} | "
            f"{'–' if h is None else f'{h:.2f}'} |"
        )
    for s in c["skipped"]:
        lines.append(f"\nSkipped `{s['run_dir']}`: {s['reason']}")
    if pub:
        lines += ["", f"Published rows: {pub['source']}."]
    return "\n".join(lines) + "\n"


def console_table(c: dict[str, Any]) -> str:
    """What ``compare`` and ``demo`` print: comparison.md's verdict, reference-protocol table, paired tables
    (one line per organ), the HD95 change between the networks, the sweep and the cost table."""
    keep, on = [], False
    for line in comparison_markdown(c).splitlines():
        if line.startswith("## "):
            on = line.startswith(
                ("## Verdict", "## Reference protocol", "## Paired", "## Swin-Unet against", "## Against",
                 "## Sweep", "## Cost")
            )  # fmt: skip
        if on:
            keep.append(line)
    return "\n".join(keep)


# comparison.csv's columns for the paired rows (kind "paired"; the summary rows leave them empty)
_PAIRED_FIELDS = ("kind", "baseline", "metric", "a", "b", "diff", "ci_low", "ci_high", "p", "p_holm", "wins",
                  "losses", "significant", "seeds_a", "seeds_b", "resampled")  # fmt: skip


def _surface_lines(c: dict[str, Any]) -> list[str]:
    """Mean NSD / ASSD per network (corrected protocol) under the corrected tables."""
    tol = c["groups"][0]["corrected"].get("nsd_tolerance")
    unit = c["groups"][0]["corrected"]["hd95_unit"]
    tol_text = "–" if not tol else ", ".join(f"{t:g}" for t in dict.fromkeys(tol))
    lines = [
        f"Surface metrics: NSD at a tolerance of {tol_text} {'voxels' if unit == 'voxel' else unit} (%), "
        "ASSD in the HD95 unit; mean ± std over seeds.",
        "",
        "| Method | NSD | ASSD |",
        "|---|---|---|",
    ]
    for g in c["groups"]:
        s = g["corrected"]
        lines.append(f"| {g['label']} | {_pm(s['mean_nsd'], 100)} | {_pm(s['mean_assd'])} |")
    return [*lines, ""]


def comparison_rows(c: dict[str, Any]) -> list[dict[str, Any]]:
    """``comparison.csv``: one row per (group, protocol, column); Dice as a fraction, the mean first; then one
    row per paired record (kind "paired", ``model`` is the second network, ``baseline`` the first)."""
    rows = []
    for g in c["groups"]:
        for p in PROTOCOLS:
            s = g[p]
            entries = [("mean", s["mean_dice"], s["mean_hd95"])]
            entries += [
                (t, s["columns"][t]["dice"], s["columns"][t]["hd95"]) for t in c["dataset"]["columns"]
            ]
            for col, d, h in entries:
                rows.append({
                    "model": g["model"],
                    **{k: _fmt_value(v) for k, v in g["sweep"].items()},
                    "protocol": p,
                    "column": col,
                    "n": g["n"],
                    "seeds": " ".join(str(x) for x in g["seeds"]),
                    "dice_mean": d["mean"], "dice_std": d["std"],
                    "hd95_mean": h["mean"], "hd95_std": h["std"],
                    "hd95_unit": s["hd95_unit"],
                    "kind": "summary",
                })  # fmt: skip
    for r in c.get("paired") or []:
        rows.append({
            "model": r["model_b"],
            **{k: _fmt_value(v) for k, v in r["sweep"].items()},
            "protocol": r["protocol"],
            "column": r["organ"],
            "hd95_unit": r["unit"] if r["metric"] == "hd95" else None,
            "kind": "paired",
            "baseline": r["model_a"],
            **{k: r[k] for k in _PAIRED_FIELDS[2:]},
        })  # fmt: skip
    return rows


def write_comparison(out: str | Path, c: dict[str, Any]) -> dict[str, Path]:
    """Write ``comparison.md``, ``.json`` and ``.csv`` atomically; returns their paths."""
    out = Path(out)
    paths = {"md": out / "comparison.md", "json": out / "comparison.json", "csv": out / "comparison.csv"}
    atomic_write_text(paths["json"], json.dumps(c, indent=1, default=str) + "\n")
    rows = comparison_rows(c)
    buf = io.StringIO()
    fields = [
        "model",
        *c["sweep_keys"],
        "protocol",
        "column",
        "n",
        "seeds",
        "dice_mean",
        "dice_std",
        "hd95_mean",
        "hd95_std",
        "hd95_unit",
        *_PAIRED_FIELDS,
    ]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["md"], comparison_markdown(c))
    return paths


# ------------------------------------------------------------------------------------------------ figures


def _save(fig, path: Path) -> None:
    from organseg.evaluation.report import _pyplot

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _write_figures(out: Path, c: dict[str, Any]) -> dict[str, str]:
    """Per-organ grouped bars (DSC and HD95, error bars = std over seeds) and DSC vs each swept key."""
    figures = {"per-organ DSC and HD95": _plot_organs(out / "comparison_organs.png", c)}
    for key in c["sweep_keys"]:
        path = _plot_sweep(out / f"comparison_sweep_{_safe(key)}.png", c, key)
        if path is not None:
            figures[f"DSC vs {key}"] = path
    return figures


def _model_color(index: int) -> tuple[float, float, float]:
    from matplotlib import colormaps

    return tuple(colormaps["tab10"](index % 10)[:3])  # type: ignore[return-value]


def _group_colors(c: dict[str, Any]) -> list[tuple[float, float, float]]:
    """One colour family per network; its swept variants go from the full colour towards white."""
    out = []
    for g in c["groups"]:
        variants = [x for x in c["groups"] if x["model"] == g["model"]]
        k, n = variants.index(g), len(variants)
        base = np.array(_model_color(c["models"].index(g["model"])))
        out.append(tuple(base + (1.0 - base) * 0.6 * k / max(n - 1, 1)))
    return out


def _plot_organs(path: Path, c: dict[str, Any]) -> str:
    from organseg.evaluation.report import _pyplot

    plt = _pyplot()
    titles = ["mean", *c["dataset"]["columns"]]
    groups = c["groups"]
    pub = c.get("published")
    pub_rows = []
    if pub:
        for m in c["models"]:
            row = pub["rows"].get(pub["model_row"].get(m, ""))
            if row:
                pub_rows.append((f"{pub['model_row'][m]} (paper)", row, m))
    n_series = len(groups) + len(pub_rows)
    width = 0.8 / max(n_series, 1)
    x = np.arange(len(titles))
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.9 * len(titles) * max(1, n_series / 3) + 2), 6.6))
    colors = _group_colors(c)
    for panel, (ax, metric) in enumerate(zip(axes, ("dice", "hd95"), strict=True)):
        scale = 100.0 if metric == "dice" else 1.0
        for k, g in enumerate(groups):
            s = g["reference"]
            stats = [s[f"mean_{metric}"]] + [s["columns"][t][metric] for t in titles[1:]]
            mean = [np.nan if st["mean"] is None else st["mean"] * scale for st in stats]
            err = [0.0 if st["std"] is None else st["std"] * scale for st in stats]
            # Neither metric can be negative: clip the lower error bar at zero.
            low = [min(e, m) if np.isfinite(m) else 0.0 for e, m in zip(err, mean, strict=True)]
            ax.bar(
                x + (k - (n_series - 1) / 2) * width,
                mean,
                width,
                yerr=[low, err] if any(st["std"] is not None for st in stats) else None,  # none for n = 1
                capsize=2,
                color=colors[k],
                label=f"{g['label']} (n={g['n']})" if panel == 0 else None,
                error_kw={"elinewidth": 0.8},
            )
        for j, (name, row, model) in enumerate(pub_rows):
            key = "DSC" if metric == "dice" else "HD95"
            vals = [row.get(key)] + [row.get(t) if metric == "dice" else None for t in titles[1:]]
            vals = [np.nan if v is None else v for v in vals]
            ax.bar(
                x + (len(groups) + j - (n_series - 1) / 2) * width,
                vals,
                width,
                color="white",
                edgecolor=_model_color(c["models"].index(model)),
                hatch="//",
                label=name if panel == 0 else None,
            )
        ax.set_xticks(x, titles, rotation=20, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        unit = groups[0]["reference"]["hd95_unit"] if groups else "voxel"
        ax.set_ylabel("DSC (%)" if metric == "dice" else f"HD95 ({unit})")
        if metric == "dice":
            ax.set_ylim(0, 105)
    synth = " — SYNTHETIC DATA" if c["dataset"]["synthetic"] else ""
    axes[0].set_title(
        f"Per-organ DSC and HD95, {c['split']} split, reference protocol, mean ± std over seeds{synth}",
        fontsize=9,
    )
    fig.legend(loc="lower center", ncol=min(n_series, 3), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.02 + 0.025 * math.ceil(n_series / 3), 1, 1))
    _save(fig, path)
    return path.name


def _plot_sweep(path: Path, c: dict[str, Any], key: str) -> str | None:
    from organseg.evaluation.report import _pyplot

    plt = _pyplot()
    others = [k for k in c["sweep_keys"] if k != key]
    lines: dict[str, list[tuple[Any, dict, dict]]] = {}
    colors = _group_colors(c)
    line_color: dict[str, tuple[float, float, float]] = {}
    for g in c["groups"]:
        name = g["model"] + "".join(f", {k}={_fmt_value(g['sweep'][k])}" for k in others)
        s = g["reference"]
        lines.setdefault(name, []).append((g["sweep"][key], s["mean_dice"], s["mean_hd95"]))
        line_color.setdefault(name, colors[c["groups"].index(g)])
    values = list(dict.fromkeys(_freeze(v) for pts in lines.values() for v, _, _ in pts))
    if len(values) < 2:
        return None
    decoded = [json.loads(v) for v in values]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in decoded)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, pts in lines.items():
        if numeric:
            pts = sorted(pts, key=lambda p: p[0])
            xs = [p[0] for p in pts]
        else:
            xs = [values.index(_freeze(p[0])) for p in pts]
        for ax, idx, scale in ((axes[0], 1, 100.0), (axes[1], 2, 1.0)):
            ys = [np.nan if p[idx]["mean"] is None else p[idx]["mean"] * scale for p in pts]
            es = [0.0 if p[idx]["std"] is None else p[idx]["std"] * scale for p in pts]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name, color=line_color[name])
    unit = c["groups"][0]["reference"]["hd95_unit"]
    for ax, ylabel in ((axes[0], "mean DSC (%)"), (axes[1], f"mean HD95 ({unit})")):
        if numeric and min(decoded) > 0 and max(decoded) / min(decoded) >= 4:
            ax.set_xscale("log")
        if numeric:
            ax.set_xticks(sorted(decoded), [_fmt_value(v) for v in sorted(decoded)])
            ax.minorticks_off()
        else:
            ax.set_xticks(range(len(decoded)), [_fmt_value(v) for v in decoded])
        ax.set_xlabel(key)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    synth = " — SYNTHETIC DATA" if c["dataset"]["synthetic"] else ""
    fig.suptitle(f"{c['split']} split, reference protocol, mean ± std over seeds{synth}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return path.name


__all__ = [
    "PlannedRun",
    "Sweep",
    "collect",
    "comparison_markdown",
    "console_table",
    "find_runs",
    "infer_sweep_keys",
    "parse_seeds",
    "parse_sets",
    "plan_runs",
    "run_name",
    "run_state",
    "run_study",
    "split_values",
    "write_comparison",
]
