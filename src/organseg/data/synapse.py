"""Synapse multi-organ CT in the TransUNet format, read exactly as the reference loader does.

Layout (``root`` is the folder holding these; the lists may also sit in ``root/lists/lists_Synapse`` as in the
reference repositories, or anywhere via ``list_dir=``)::

    train_npz/caseNNNN_sliceKKK.npz     'image' (512, 512) in [0, 1], 'label' (512, 512) class indices
    test_vol_h5/caseNNNN.npy.h5         'image' (D, 512, 512), 'label' (D, 512, 512)
    lists_Synapse/train.txt             slice names, one a line (2211 in the reference)
    lists_Synapse/test_vol.txt          case names (12 in the reference)
    lists_Synapse/val.txt               optional: case names held out for validation
    organseg_synapse.json               optional sidecar from ``organseg prepare synapse`` (spacing, split)

Orientation (:attr:`SegmentationDataset.orientation`): a folder written by ``organseg prepare synapse``
records each case's direction matrix, and the training cases' common orientation code is the dataset's
(None, file order, when they differ). The TransUNet files as distributed record no geometry: they are
taken to be :data:`TRANSUNET_ORIENTATION` ("LPS": rows anterior to posterior, columns from the patient's
right to left), the orientation the Swin-Unet and TransUNet papers' figures show when the arrays are drawn
as stored, and what ``prepare`` writes from an LPS-stored raw CT. It is an assumption (docs/evaluation.md).

Splits: ``test`` is ``test_vol.txt``. The reference has **no validation split** (it evaluates the last epoch);
``val`` exists only when ``val.txt`` exists or when ``val_cases=N`` holds out N training cases (seeded).
Held-out cases are removed from the training slices, and their volumes are rebuilt by stacking their slices.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from organseg.data.base import SegmentationDataset, Volume, check_disjoint_subjects
from organseg.data.classes import SYNAPSE_CLASSES
from organseg.data.completion import require_complete
from organseg.data.io import read_h5_pair, read_list, read_npz_slice, require_files
from organseg.data.preprocess import ct_window_spec, validate_spec
from organseg.data.slices import FileSlices, holdout
from organseg.errors import ConfigError, DataError
from organseg.fileio import read_json
from organseg.imageio.orientation import scan_orientation

SIDECAR = "organseg_synapse.json"
PREPARE_RECORDS = ".organseg_prepare"  # prepare's per-case records (organseg.data.prepare.MARKERS)
_SLICE_RE = re.compile(r"^(?P<case>.+)_slice(?P<index>\d+)$")
#: The orientation the TransUNet Synapse files (no geometry stored) are taken to have (module docstring).
TRANSUNET_ORIENTATION = "LPS"


def _case_of(slice_name: str) -> str:
    m = _SLICE_RE.match(slice_name)
    return m.group("case") if m else slice_name


def _slice_index(slice_name: str) -> int:
    m = _SLICE_RE.match(slice_name)
    return int(m.group("index")) if m else 0


def _case_name(entry: str) -> str:
    """List entries are 'case0001' or 'case0001.npy.h5' (all.lst style) or a slice name."""
    for suffix in (".npy.h5", ".h5", ".npz"):
        if entry.endswith(suffix):
            entry = entry[: -len(suffix)]
    return _case_of(entry)


def find_list_dir(root: Path) -> Path | None:
    for cand in (root / "lists_Synapse", root / "lists" / "lists_Synapse", root / "lists"):
        if (cand / "train.txt").is_file() or (cand / "test_vol.txt").is_file():
            return cand
    return None


class SynapseDataset(SegmentationDataset):
    """Reader for the TransUNet Synapse format (see module docstring)."""

    name = "synapse"
    class_names = SYNAPSE_CLASSES

    def __init__(
        self,
        root: str | Path,
        *,
        list_dir: str | Path | None = None,
        val_cases: int | Sequence[str] = 0,
        val_seed: int = 1234,
    ) -> None:
        self.root = Path(root)
        self.train_dir = self.root / "train_npz"
        self.test_dir = self.root / "test_vol_h5"
        if not self.train_dir.is_dir() and not self.test_dir.is_dir():
            raise DataError(f"{self.root}: not a Synapse folder (no train_npz/ or test_vol_h5/)")
        # A folder `organseg prepare synapse` is writing or was killed in: its record says "in progress".
        # (Prepare from before the record existed wrote its per-case records in .organseg_prepare/ and the
        # sidecar last, so records without a sidecar mean the same.) A download has neither.
        legacy = (self.root / PREPARE_RECORDS).is_dir() and not (self.root / SIDECAR).is_file()
        if require_complete(self.root) is None and legacy:
            raise DataError(
                f"{self.root}: incomplete dataset: `organseg prepare synapse` did not finish (it writes "
                f"{SIDECAR} last); re-run it with the same --raw and --out to complete it"
            )
        self.list_dir = Path(list_dir) if list_dir is not None else find_list_dir(self.root)
        self.sidecar = self._read_sidecar()
        self.preprocessing = dict(self.sidecar.get("preprocessing") or ct_window_spec())
        self.synthetic = bool(self.sidecar.get("synthetic")) or (self.root / "SYNTHETIC.txt").is_file()
        self._cases_meta: dict = self.sidecar.get("cases", {})

        # Slice names from train.txt as the reference; else (lists missing from a download) the folder.
        train_list = self.list_dir / "train.txt" if self.list_dir else None
        if train_list is not None and train_list.is_file():
            names = read_list(train_list, what="slice list")
            require_files([self.train_dir / f"{n}.npz" for n in names], train_list, "slices")
            self.lists_source = "lists"
            self.train_source = str(train_list)
        else:
            names = (
                sorted(p.name[: -len(".npz")] for p in self.train_dir.glob("*.npz"))
                if self.train_dir.is_dir()
                else []
            )
            self.lists_source = "folder"
            self.train_source = str(self.train_dir)
        self._train_names = names
        self._train_cases: dict[str, list[str]] = {}
        for n in names:
            self._train_cases.setdefault(_case_of(n), []).append(n)

        test_list = self.list_dir / "test_vol.txt" if self.list_dir else None
        if test_list is not None and test_list.is_file():
            self._test = [_case_name(e) for e in read_list(test_list, what="test list")]
            require_files([self._h5_path(c) for c in self._test], test_list, "test volumes")
        else:
            self._test = (
                sorted(p.name[: -len(".npy.h5")] for p in self.test_dir.glob("*.npy.h5"))
                if self.test_dir.is_dir()
                else []
            )

        self._val = self._resolve_val(val_cases, val_seed)
        if not self._train_names and not self._test:
            raise DataError(f"{self.root}: no training slices and no test volumes found")
        self._codes = self._case_orientations()
        self.orientation, self.orientation_note = self._training_orientation()
        check_disjoint_subjects(self)

    # ----------------------------------------------------------------------------------------------- helpers
    def _read_sidecar(self) -> dict:
        path = self.root / SIDECAR
        if not path.is_file():
            return {}
        data = read_json(path, "sidecar JSON")
        names = data.get("class_names")
        if names is not None and list(names) != list(SYNAPSE_CLASSES):
            raise DataError(
                f"{path}: class_names {names} differ from the {len(SYNAPSE_CLASSES)} Synapse classes "
                f"{list(SYNAPSE_CLASSES)} this reader maps label ids to"
            )
        if data.get("preprocessing") is not None:
            try:
                validate_spec(data["preprocessing"])
            except ConfigError as exc:  # the spec travels into checkpoints and on to `predict`
                raise DataError(f"{path}: {exc}") from None
        cases = data.get("cases", {})
        if not isinstance(cases, dict):
            raise DataError(f"{path}: 'cases' must map case names to their records")
        for case, meta in cases.items():
            sp = meta.get("spacing") if isinstance(meta, dict) else None
            if sp is None:
                continue
            ok = isinstance(sp, list) and len(sp) == 3
            ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in sp)
            if not ok or not all(np.isfinite(v) and v > 0 for v in sp):
                raise DataError(
                    f"{path}: case {case} spacing {sp!r} must be three positive numbers (z, y, x mm); "
                    "every volume and surface distance is computed from it"
                )
        return data

    def _case_orientations(self) -> dict[str, str]:
        """Orientation code of every case whose direction matrix the sidecar records."""
        where = str(self.root / SIDECAR)
        return {
            case: scan_orientation(meta["direction"], f"{where}: case {case}").code
            for case, meta in self._cases_meta.items()
            if isinstance(meta, dict) and meta.get("direction") is not None
        }

    def _training_orientation(self) -> tuple[str | None, str]:
        """The training cases' common orientation and where it comes from."""
        cases = [c for c in self.case_ids("train") if c in self._codes] or list(self._codes)
        if not cases:
            return TRANSUNET_ORIENTATION, "assumed: the TransUNet Synapse files record no geometry"
        codes = sorted({self._codes[c] for c in cases})
        if len(codes) > 1:
            counts = ", ".join(f"{k} ({sum(self._codes[c] == k for c in cases)})" for k in codes)
            return None, f"unknown: the training cases are stored in {len(codes)} orientations, {counts}"
        return codes[0], f"from the direction matrices of {len(cases)} case(s) in {SIDECAR}"

    def _h5_path(self, case_id: str) -> Path:
        return self.test_dir / f"{case_id}.npy.h5"

    def _resolve_val(self, val_cases: int | Sequence[str], seed: int) -> list[str]:
        val_list = self.list_dir / "val.txt" if self.list_dir else None
        has_list = val_list is not None and val_list.is_file()
        asked = bool(val_cases) if isinstance(val_cases, int) else len(val_cases) > 0
        if has_list and asked:
            raise ConfigError(f"{val_list} already defines the validation cases; do not also pass val_cases")
        if has_list:
            val = []
            for e in read_list(val_list, what="validation list"):
                c = _case_name(e)
                if c not in val:
                    val.append(c)
            source = val_list
        elif isinstance(val_cases, int):
            val = holdout(sorted(self._train_cases), val_cases, seed)
            source = None
        else:
            val = [_case_name(str(c)) for c in val_cases]
            source = "val_cases"
        unknown = [c for c in val if c not in self._train_cases and not self._h5_path(c).is_file()]
        if unknown:
            raise DataError(
                f"{source or self.root}: validation case(s) {unknown[:5]} have no slices and no volume"
            )
        overlap = [c for c in val if c in self._test]
        if overlap:
            raise DataError(f"{source or self.root}: validation case(s) {overlap[:5]} are also test cases")
        return val

    # ------------------------------------------------------------------------------------------- interface
    def _train_kept(self) -> list[str]:
        held = set(self._val)
        return [n for n in self._train_names if _case_of(n) not in held]

    def train_slices(self) -> FileSlices:
        return FileSlices([self.train_dir / f"{n}.npz" for n in self._train_kept()], "npz", self.num_classes)

    def train_slice_cases(self) -> list[str]:
        return [_case_of(n) for n in self._train_kept()]

    def case_ids(self, split: str) -> list[str]:
        if split == "test":
            return list(self._test)
        if split == "val":
            return list(self._val)
        if split == "train":
            held = set(self._val)
            return [c for c in sorted(self._train_cases) if c not in held]
        raise ConfigError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")

    def split_source(self, split: str) -> str:
        if split == "train":
            return self.train_source
        name = {"val": "val.txt", "test": "test_vol.txt"}[split]
        if self.list_dir is not None and (self.list_dir / name).is_file():
            return str(self.list_dir / name)
        return f"the {split} split"

    def spacing(self, case_id: str) -> tuple[float, float, float] | None:
        meta = self._cases_meta.get(case_id, {})
        sp = meta.get("spacing")
        return tuple(float(v) for v in sp) if sp else None

    def volume(self, case_id: str) -> Volume:
        h5 = self._h5_path(case_id)
        if h5.is_file():
            image, label = read_h5_pair(h5, ndim=3)
            source = str(h5)
        elif case_id in self._train_cases:
            names = sorted(self._train_cases[case_id], key=_slice_index)
            pairs = [read_npz_slice(self.train_dir / f"{n}.npz") for n in names]
            shapes = {p[0].shape for p in pairs}
            if len(shapes) != 1:
                raise DataError(f"{self.train_dir}: slices of {case_id} differ in shape {sorted(shapes)}")
            image = np.stack([p[0] for p in pairs])
            label = np.stack([p[1] for p in pairs])
            source = str(self.train_dir / f"{case_id}_slice*.npz")
        else:
            raise DataError(f"{self.root}: no case {case_id!r} (neither {h5.name} nor training slices)")
        if label.size and int(label.max()) >= self.num_classes:
            raise DataError(
                f"{source}: label id {int(label.max())} is outside the {self.num_classes} Synapse classes"
            )
        meta = {"source": source, "synthetic": self.synthetic}
        meta.update(
            {k: v for k, v in self._cases_meta.get(case_id, {}).items() if k in ("origin", "direction")}
        )
        code = self._codes.get(case_id) if self._codes else TRANSUNET_ORIENTATION
        if code is not None:
            meta["orientation"] = code
        return Volume(case_id, image, label, self.spacing(case_id), meta)

    def info(self) -> dict:
        out = super().info()
        out.update(
            root=str(self.root),
            layout="synapse",
            synthetic=self.synthetic,
            lists=self.lists_source,
            train_slices=len(self.train_slices()),
            splits={s: len(self.case_ids(s)) for s in ("train", "val", "test")},
        )
        return out
