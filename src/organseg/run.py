"""The run folder as one object: its file names, its atomic writes and its typed reads live here only.

Layout (``organseg train`` writes the first six, ``organseg test`` the results, ``organseg report`` the
report, ``organseg compare --jobs N`` the process log)::

    RUN_DIR/config.yaml          resolved configuration
    RUN_DIR/env.json             versions, git revision, device, precision, threads, command line
    RUN_DIR/metrics.jsonl        {"kind": "train", ...} per logged step, {"kind": "val", ...} per validation
    RUN_DIR/tensorboard/         when tensorboard is installed
    RUN_DIR/checkpoints/         last.pt (full training state), epoch_N.pt, best.pt
    RUN_DIR/summary.json         the training summary, written at the end
    RUN_DIR/results/<split>_<checkpoint>/   summary.json, per_case.{csv,json}, reference_log.txt,
                                            overlay_slices.npz, viewer/, nifti/  (see :class:`ResultsDir`)
    RUN_DIR/report.md, RUN_DIR/report/*.png
    RUN_DIR/train.log            output of the train / test processes a parallel study started

Writes go through :mod:`organseg.fileio` (temporary name, then rename; stale temporaries of killed writers
are swept there), so a reader never sees half a file, with one exception by design: ``metrics.jsonl`` grows
by whole lines while a run trains, and :meth:`RunDir.metrics` ignores a last line cut by a kill.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from organseg.errors import DataError
from organseg.fileio import atomic_write_text, file_sha256, read_json, read_text, read_yaml
from organseg.results import ResultsSummary

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
SUMMARY = "summary.json"
RESULTS = "results"
REPORT = "report.md"
REPORT_FIGURES = "report"
PROCESS_LOG = "train.log"
#: What ``organseg train`` writes in a run folder (and removes again when a fresh run fails before its first
#: checkpoint); anything else in the folder, such as a dataset kept beside the run, is an input.
TRAIN_FILES = (CONFIG, ENV, SUMMARY, METRICS, CHECKPOINTS, TENSORBOARD)
#: A study folder (``organseg compare --out OUT``) keeps its runs in ``OUT/runs/<run name>/``.
STUDY_RUNS = "runs"
#: Checkpoint names inside ``checkpoints/`` (without ``.pt``).
CHECKPOINT_NAME = re.compile(r"^(best|last|epoch_\d+)$")
#: Exit code of an ``organseg train`` process whose loss became NaN or infinite (TrainingDiverged). Other
#: errors exit 2, as every verb does; a study tells a diverged run (a result of its sweep) from a failure by
#: this code, not by the text of the message.
EXIT_DIVERGED = 3


@dataclass(frozen=True)
class TrainSummary:
    """``summary.json`` of a finished training (fields None when an older organseg did not record them)."""

    stopped: str | None = None  # "completed" or "time_budget"
    iterations: int | None = None
    epochs: float | None = None
    max_iterations: int | None = None
    train_seconds: float | None = None
    images_per_second: float | None = None
    best_mean_dice: float | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSummary:
        names = [f for f in cls.__dataclass_fields__ if f != "raw"]
        return cls(**{k: data.get(k) for k in names}, raw=dict(data))


@dataclass(frozen=True)
class RunEnv:
    """``env.json``: where and how a run trained (the fields the cost table reads; ``raw`` holds the rest)."""

    device: str | None = None
    device_name: str | None = None
    torch_threads: int | None = None
    world_size: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunEnv:
        names = [f for f in cls.__dataclass_fields__ if f != "raw"]
        return cls(**{k: data.get(k) for k in names}, raw=dict(data))


# Fields every organseg test summary has; a file without them is something else.
_TEST_SUMMARY_KEYS = ("class_names", "split", "cases", "reference", "corrected")


def read_test_summary(path: str | Path) -> ResultsSummary:
    """A results folder's ``summary.json``; DataError naming the file when it is not an organseg test summary.

    A dict typed as :class:`organseg.evaluation.evaluate.ResultsSummary`, not a dataclass: its protocol
    blocks are the documented JSON that tables, reports and the study index by organ and protocol."""
    data = read_json(path, "test summary")
    missing = [k for k in _TEST_SUMMARY_KEYS if k not in data]
    if missing:
        raise DataError(f"{path}: not an organseg test summary (no {', '.join(missing)})")
    return data


@dataclass(frozen=True)
class ResultsDir:
    """What ``organseg test`` writes for one (split, checkpoint): inside a run folder, or any ``--out``."""

    path: Path

    SUMMARY = "summary.json"
    PER_CASE_CSV = "per_case.csv"
    PER_CASE_JSON = "per_case.json"
    REFERENCE_LOG = "reference_log.txt"
    OVERLAYS = "overlay_slices.npz"
    VIEWER = "viewer"
    NIFTI = "nifti"

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        """``path/name`` for one of the class's names (``ResultsDir.PER_CASE_JSON`` ...)."""
        return self.path / name

    @property
    def summary_file(self) -> Path:
        return self.path / self.SUMMARY

    def exists(self) -> bool:
        """Whether a test finished here: ``summary.json`` is the folder's completion mark, written last (after
        the overlays, viewer pages and NIfTI files, renamed after the per-case files of its set), so a test
        stopped half-way (a full disk, a kill) leaves no summary and no folder that later commands accept."""
        return self.summary_file.is_file()

    def summary(self) -> ResultsSummary:
        return read_test_summary(self.summary_file)

    def stale(
        self,
        checkpoint: str | Path,
        *,
        split: str | None = None,
        precision: str | None = None,
        data_fingerprint: str | None = None,
    ) -> str | None:
        """Why these results are not the test of ``checkpoint`` as it is now, in words; None when they are.

        The one reuse rule (``compare`` tests such a run again, ``compare --collect`` skips it, saying why):
        results are of a checkpoint when they were computed from its very bytes (``checkpoint_sha256``; a
        summary written before organseg recorded it: written after the checkpoint file), on the whole split
        (no ``--max-cases``), and, when given, on ``split``, at ``precision`` and on the dataset of
        ``data_fingerprint``."""
        if not self.exists():
            return f"no {self.summary_file}"
        try:
            s = self.summary()
        except DataError as exc:
            return str(exc)
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            return f"{checkpoint} is gone"
        if "checkpoint_sha256" in s:
            if s.get("checkpoint_sha256") is None:
                return "they are an ensemble's or a TTA's, not this checkpoint's alone"
            if s["checkpoint_sha256"] != file_sha256(checkpoint):
                return f"they were tested with another {checkpoint.name} (the run was trained on since)"
        elif self.summary_file.stat().st_mtime < checkpoint.stat().st_mtime:
            return f"{checkpoint.name} was written after them (the run was trained on or resumed since)"
        elif Path(str(s.get("checkpoint"))).name != checkpoint.name:
            return f"they were tested with {s.get('checkpoint')}, not {checkpoint.name}"
        if s.get("max_cases") is not None:
            return f"they cover {s.get('cases')} case(s) only (--max-cases {s['max_cases']}), not the split"
        if split is not None and s.get("split") != split:
            return f"they are of the {s.get('split')} split, not {split}"
        if precision is not None and s.get("precision") != precision:
            return f"they were tested at precision {s.get('precision')}, not {precision}"
        recorded = s.get("data_fingerprint")  # unknown in a summary written before organseg recorded it
        if data_fingerprint is not None and recorded is not None and recorded != data_fingerprint:
            return f"they were tested on another dataset ({s.get('data')})"
        return None


class RunDir:
    """One run folder. Cheap to make (touches nothing); reads and writes happen in the methods."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------------------------------ the names
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def env_file(self) -> Path:
        return self.path / ENV

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def report_file(self) -> Path:
        return self.path / REPORT

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_FIGURES

    @property
    def process_log(self) -> Path:
        return self.path / PROCESS_LOG

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.pt`` (``name``: best, last or epoch_N; a ``.pt`` ending is accepted)."""
        return self.checkpoints_dir / (name if name.endswith(".pt") else f"{name}.pt")

    def checkpoints(self) -> list[str]:
        """Names (without ``.pt``) of the checkpoints present, sorted."""
        folder = self.checkpoints_dir
        return sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []

    def results(self, split: str, checkpoint: str) -> ResultsDir:
        """``results/<split>_<checkpoint>/`` (whether or not a test wrote it yet)."""
        return ResultsDir(self.path / RESULTS / f"{split}_{checkpoint}")

    def all_results(self) -> list[ResultsDir]:
        """The results folders a test finished, sorted by name."""
        base = self.path / RESULTS
        if not base.is_dir():
            return []
        return [r for r in (ResultsDir(p) for p in sorted(base.iterdir())) if r.exists()]

    def is_run(self) -> bool:
        """Whether this is a run folder: ``organseg train`` wrote its configuration here."""
        return self.config_file.is_file()

    # ---------------------------------------------------------------------------------------------- writes
    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.config_file, yaml_text)

    def write_env(self, env: dict[str, Any]) -> None:
        atomic_write_text(self.env_file, json.dumps(env, indent=2) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_file, json.dumps(summary, indent=2) + "\n")

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` as a whole (a fresh run, or a resumed one cut back to its checkpoint)."""
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in records))

    # ----------------------------------------------------------------------------------------------- reads
    @property
    def config(self) -> dict[str, Any]:
        """The resolved configuration; DataError naming the file when it is missing or not a configuration.

        A dict: configurations are compared, flattened and overridden key by key everywhere."""
        data = read_yaml(self.config_file, "run configuration")
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise DataError(f"{self.config_file}: not a run configuration (no model section)")
        return data

    @property
    def model_name(self) -> str | None:
        """The network of the run, or None when the configuration is missing or damaged."""
        try:
            return self.config["model"].get("name")
        except DataError:
            return None

    def summary(self) -> TrainSummary | None:
        """The training summary, or None while the run has not finished (or the file is damaged)."""
        try:
            return TrainSummary.from_dict(read_json(self.summary_file, "training summary"))
        except DataError:
            return None

    def env(self) -> RunEnv | None:
        """The recorded environment, or None when there is none (or it is damaged)."""
        try:
            return RunEnv.from_dict(read_json(self.env_file, "run environment"))
        except DataError:
            return None

    def metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (only ``kind`` "train" or "val" if given).

        The one reader of the log. A last line cut by a killed run (no newline, not JSON) is ignored; any
        other damaged line is a DataError naming the line. Records stay dicts: they are open-ended (a
        validation record carries every organ), and plotting and tests read them by key."""
        text = read_text(self.metrics_file, "metrics log")
        return [r for r in _parse_records(text, self.metrics_file) if kind is None or r.get("kind") == kind]

    def last_iteration(self, tail_bytes: int = 4096) -> int:
        """The last training iteration logged, from the log's tail only (a long run's log is megabytes and a
        study's progress bar asks every second); 0 when there is none yet."""
        return int(self._last_logged("iter", tail_bytes))

    def last_train_seconds(self, tail_bytes: int = 4096) -> float:
        """The training seconds of the last iteration logged (the run's own clock, resumes included: what a
        time budget counts), from the log's tail only; 0 when there is none yet."""
        return float(self._last_logged("time", tail_bytes))

    def _last_logged(self, key: str, tail_bytes: int) -> float:
        path = self.metrics_file
        try:
            with path.open("rb") as f:
                start = max(0, path.stat().st_size - tail_bytes)
                f.seek(start)
                text = f.read().decode("utf-8", "replace")
            records = list(_parse_records(text, path, cut_head=start > 0))
        except (OSError, DataError):  # no log yet, or one a progress bar need not judge
            return 0
        return next((r[key] for r in reversed(records) if "iter" in r and key in r), 0)


def _parse_records(text: str, path: Path, *, cut_head: bool = False) -> Iterator[dict[str, Any]]:
    """JSON lines of ``text``. ``cut_head``: the text starts mid-file, so its first line may be cut too."""
    lines = text.split("\n")
    complete = text.endswith("\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if (n == len(lines) and not complete) or (n == 1 and cut_head):
                continue  # a line being written, or cut by a kill or by the seek
            raise DataError(f"{path}:{n}: not a JSON record ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: expected a JSON object per line")
        yield rec


__all__ = [
    "CHECKPOINT_NAME",
    "EXIT_DIVERGED",
    "STUDY_RUNS",
    "TRAIN_FILES",
    "ResultsDir",
    "RunDir",
    "RunEnv",
    "TrainSummary",
    "read_test_summary",
]
