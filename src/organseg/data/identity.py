"""Which dataset a run was trained on: where it was and what it was, recorded once and checked at every use.

``train`` records in every checkpoint (its ``dataset`` field) a :class:`DataRecord`: the folder as given
(``data.root``, perhaps ``../syn``), the folder it really was (absolute, resolved when training started) and a
fingerprint of the dataset: its reader, class names and the sorted case list of every split, hashed. No voxel
is read, so a fingerprint costs a folder listing. Later uses check it:

* ``test`` without ``--data`` opens the recorded folder (not ``data.root`` against whatever folder the command
  is started from) and refuses it when its fingerprint differs: the folder was changed or replaced since;
* ``test --data DIR`` on a dataset with another fingerprint warns in one line and tests it as asked
  (testing a network on another dataset of the same classes is a legitimate external test);
* ``train --resume`` refuses another dataset; a study tests again a run whose results were computed on
  another one (the results' ``data_fingerprint``).

A checkpoint written before the record resolves a relative ``data.root`` against the folder its run was
started from when the run recorded it (``env.json``'s ``cwd``), and otherwise refuses to guess.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TypedDict

from organseg.data.base import SPLITS, SegmentationDataset
from organseg.errors import ConfigError, DataError, OrgansegError


class SplitPrint(TypedDict):
    cases: int  #: how many cases the split lists
    sha256: str  #: the SHA-256 of the sorted case ids (16 hex digits)


class Fingerprint(TypedDict):
    reader: str  #: the reader class (``SynapseDataset``, ...)
    class_names: list[str]
    splits: dict[str, SplitPrint]  #: train (the training cases), val, test
    digest: str  #: the SHA-256 of the fields above (16 hex digits): equal digests, same dataset


class DataRecord(TypedDict):
    """A checkpoint's ``dataset`` field."""

    root: str | None  #: ``data.root`` as given (may be relative)
    resolved: str | None  #: the folder it was, absolute (None for a dataset in memory)
    fingerprint: Fingerprint


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _cases(dataset: SegmentationDataset, split: str) -> list[str]:
    try:
        return sorted(dataset.case_ids(split))
    except OrgansegError:  # a reader without this split
        return []


def dataset_fingerprint(dataset: SegmentationDataset) -> Fingerprint:
    """What the dataset is, without its voxels. A cross-validation fold is fingerprinted as its whole dataset:
    the fold's division follows from the configuration, which the run records too."""
    base = getattr(dataset, "base", dataset)  # FoldView
    splits: dict[str, SplitPrint] = {}
    for split in SPLITS:
        cases = _cases(base, split)
        splits[split] = {"cases": len(cases), "sha256": _digest(cases)}
    fp: dict[str, Any] = {
        "reader": type(base).__name__,
        "class_names": list(base.class_names),
        "splits": splits,
    }
    fp["digest"] = _digest(fp)
    return fp  # type: ignore[return-value]


def data_record(dataset: SegmentationDataset, given: str | Path | None) -> DataRecord:
    """The record ``train`` writes into its checkpoints (``given``: ``data.root`` as configured)."""
    resolved = str(Path(os.path.abspath(dataset.root)).resolve()) if dataset.root is not None else None
    return {
        "root": None if given is None else str(given),
        "resolved": resolved,
        "fingerprint": dataset_fingerprint(dataset),
    }


def describe(fp: Fingerprint) -> str:
    counts = ", ".join(f"{s['cases']} {name}" for name, s in fp["splits"].items())
    return f"{fp['reader']}, {len(fp['class_names'])} classes, cases {counts}"


def fingerprint_difference(recorded: Fingerprint, actual: Fingerprint) -> str | None:
    """How two fingerprints differ, in words; None when they are the same dataset."""
    if recorded.get("digest") == actual.get("digest"):
        return None
    parts = []
    if recorded.get("reader") != actual.get("reader"):
        parts.append(f"layout {recorded.get('reader')} vs {actual.get('reader')}")
    if recorded.get("class_names") != actual.get("class_names"):
        parts.append(f"classes {recorded.get('class_names')} vs {actual.get('class_names')}")
    for split in SPLITS:
        a = (recorded.get("splits") or {}).get(split) or {}
        b = (actual.get("splits") or {}).get(split) or {}
        if a != b:
            parts.append(f"other {split} cases ({a.get('cases')} vs {b.get('cases')})")
    return "; ".join(parts) or "another fingerprint"


def mismatch_message(record: DataRecord, dataset: SegmentationDataset, source: str | Path) -> str | None:
    """One line naming both datasets when ``dataset`` is not the one ``record`` describes, else None."""
    actual = dataset_fingerprint(dataset)
    diff = fingerprint_difference(record["fingerprint"], actual)
    if diff is None:
        return None
    was = record.get("resolved") or record.get("root") or "a dataset in memory"
    return (
        f"{source}: the run was trained on the dataset {was} ({describe(record['fingerprint'])}), "
        f"but {dataset.location} is another ({describe(actual)}): {diff}"
    )


def check_same_dataset(record: DataRecord | None, dataset: SegmentationDataset, source: str | Path) -> None:
    """DataError (one line naming both) when ``dataset`` is not ``record``'s (None: nothing recorded)."""
    message = mismatch_message(record, dataset, source) if record else None
    if message:
        raise DataError(message)


def recorded_root(
    record: DataRecord | None, config: dict | None, source: str | Path, run_cwd: str | None = None
) -> str | None:
    """The folder to open when no ``--data`` is given: the recorded absolute folder; for a checkpoint
    without a record, ``data.root`` when absolute, or relative to ``run_cwd`` (the folder the run was started
    from, when known). A relative root and no known starting folder is a ConfigError: the folder the command
    runs in may hold another dataset of that name."""
    if record and record.get("resolved"):
        resolved = record["resolved"]
        if not Path(resolved).exists():
            raise DataError(
                f"{source}: the run's dataset {resolved} (data.root {record.get('root')!r}) is gone: "
                "pass --data DIR"
            )
        return resolved
    root = ((config or {}).get("data") or {}).get("root")
    if root is None or Path(root).is_absolute():
        return root
    if run_cwd:
        return str(Path(run_cwd) / root)
    raise ConfigError(
        f"{source}: data.root {root!r} is relative and the checkpoint does not record the folder it was "
        "relative to (written before organseg recorded it), so which dataset it means is ambiguous: "
        "pass --data DIR"
    )


__all__ = [
    "DataRecord",
    "Fingerprint",
    "check_same_dataset",
    "data_record",
    "dataset_fingerprint",
    "fingerprint_difference",
    "mismatch_message",
    "recorded_root",
]
