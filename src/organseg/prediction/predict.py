"""Segment new scans (NIfTI files, DICOM series folders, folders of them) with trained networks.

The raw intensities are mapped with the preprocessing recorded in the checkpoint (e.g. the Synapse CT
window [-125, 275] HU -> [0, 1]); the scan is turned to the orientation the checkpoint records (the training
slices'; an exact permutation and flips of the voxels from the scan's direction matrix, see
:mod:`organseg.imageio.orientation`), its slices go through :func:`predict_volume` exactly as in the test
protocol, and the label map is turned back and written with the input's size, spacing, origin and direction.
A checkpoint without an orientation (trained on data without one, or written before checkpoints recorded it)
gets the scan's voxel order as stored, slices along the axial axis, and a note says so. There is no
resampling, as in the reference: each slice is zoomed to the network size and back.

Many scans per call: the network (or the ensemble, see :mod:`organseg.inference.sources`) is built once and
each case is written on its own. A case is complete when all its files exist; the JSON sidecar is written
last, together with the label map (both or neither), after the DICOM-SEG, the viewer page and the overlay. A
case that fails leaves none of the files it wrote and does not stop the others; a complete case is skipped
unless ``overwrite``.
"""

from __future__ import annotations

import glob
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from organseg import __version__
from organseg.checkpoint import model_from_checkpoint
from organseg.data.preprocess import apply_preprocessing, modality_mismatch
from organseg.device import resolve_device
from organseg.errors import ConfigError, DataError, OrgansegError
from organseg.fileio import (
    check_distinct,
    check_output,
    check_output_file,
    check_outputs_against,
    file_sha256,
    input_index,
    staged,
)
from organseg.imageio.dicom import (
    dicom_series_files,
    find_series,
    is_dicom_folder,
    is_media_export,
    select_series,
)
from organseg.imageio.formats import IMAGE_SUFFIXES
from organseg.imageio.orientation import Reorientation, reorientation, scan_orientation
from organseg.imageio.volumes import (
    Geometry,
    check_image_file,
    read_image,
    read_nifti_transform,
    write_image,
)
from organseg.inference.engine import predict_turned
from organseg.inference.onnx import OnnxModel
from organseg.inference.sources import (
    class_count,
    combined,
    load_members,
    network_orientation,
    reference_defaults,
)
from organseg.inference.targets import checkpoint_patch_size
from organseg.locks import folder_locks
from organseg.precision import resolve_precision
from organseg.prediction.dicomseg import NO_SEGMENT, DicomSegRecord, require_dicom_extra, write_dicom_seg
from organseg.progress import progress_bar
from organseg.reporting.report import plot_prediction
from organseg.reporting.viewer import write_viewer
from organseg.values import POSITIVE_INT, check_value

_OUT_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
FORMATS = ("nifti", "dicom-seg", "both")


# ------------------------------------------------------------------------------------------------ the sidecar


class ClassVolume(TypedDict):
    """One class of the label map, background included (:func:`class_volumes`)."""

    index: int  #: the label value
    name: str
    voxels: int
    volume_ml: float  #: voxels x the voxel volume (spacing in mm; 1 mL = 1000 mm^3), 3 decimals


class TurnRecord(TypedDict):
    """The exact turn from the scan's (D, H, W) array to the network's (:class:`Reorientation`)."""

    axes: list[int]  #: the scan's array axis that becomes each of the network's axes
    flips: list[bool]  #: whether each of the network's axes is then reversed


class _OrientationCodes(TypedDict):
    network: str | None  #: the checkpoint's orientation code; None: the scan went in as stored
    scan: str | None  #: the scan's nearest orientation code (None without a network code)


class OrientationRecord(_OrientationCodes, total=False):
    """The sidecar's ``orientation``: ``network`` and ``scan``, with a network code ``tilt_degrees`` (how far
    the scan's voxel axes are from the patient axes, 3 decimals; :func:`scan_turn`), and ``turn``."""

    tilt_degrees: float
    turn: TurnRecord


class _SidecarCore(TypedDict):
    input: str  #: the scan as given (a file or a DICOM series folder)
    output: str | None  #: the label map written; None with ``--format dicom-seg``
    checkpoint: str | None  #: the one network's source file; None for an ensemble
    ensemble: list[str] | None  #: every member's source, for an ensemble; None for one network
    tta: bool  #: mirror test-time augmentation
    model_name: str | None  #: the network (of the first member)
    notes: list[str]  #: what the prediction assumed (a checkpoint without classes, a sheared sform ...)
    warnings: list[str]  #: what the user should check (an oblique scan)
    shape: list[int]  #: the label map's (D, H, W)
    #: the input's geometry, which the label map keeps (:class:`~organseg.imageio.volumes.Geometry`):
    spacing: list[float]  #: (z, y, x) in mm, the array's axis order
    origin: list[float]  #: the (x, y, z) position of voxel [0, 0, 0] in mm (LPS)
    direction: list[float]  #: the 3x3 direction cosines, row-major (LPS)
    axial_axis: int  #: the scan's array axis the network sliced along
    orientation: OrientationRecord
    preprocessing: dict[str, Any]  #: the checkpoint's intensity preprocessing (``{"kind": ...}``)
    precision: str  #: the precision the network ran at (``--precision auto`` resolved)
    precision_choice: str  #: why: "as requested", or auto's reason ("auto: CPU has avx512_bf16")
    engine: str  #: ``torch``, or ``onnxruntime`` for an ONNX model
    seconds: float  #: prediction time (network only), 3 decimals
    classes: list[ClassVolume]  #: every class in label order, background first


class Sidecar(_SidecarCore, total=False):
    """The JSON written beside each label map (``OUT.json``, :func:`sidecar_path`), and what
    :func:`predict_case` returns. Keys in the order written: ``input``, ``series`` (only when one series of
    a DICOM folder or media export was picked: its SeriesInstanceUID), then the fields above from ``output``
    to ``classes``, then the outputs beside the label map that were asked for: ``dicom_seg``
    (:class:`~organseg.prediction.dicomseg.DicomSegRecord`), ``viewer`` and ``overlay`` (their paths)."""

    series: str
    dicom_seg: DicomSegRecord
    viewer: str
    overlay: str


def axial_axis(direction: tuple[float, ...] | list[float]) -> int:
    """The array axis (0, 1 or 2 of a (D, H, W) array) whose voxel direction is closest to the patient's
    head-foot axis. The 3x3 direction matrix is row-major with one column per image axis (x, y, z), which are
    array axes 2, 1, 0."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    image_axis = int(np.argmax(np.abs(d[2])))  # the z (superior) component of each column
    return 2 - image_axis


def _stem(name: str) -> str:
    for suffix in (*_OUT_SUFFIXES, ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def sidecar_path(out: str | Path) -> Path:
    """``OUT.nii.gz`` -> ``OUT.json``."""
    out = Path(out)
    return out.with_name(_stem(out.name) + ".json")


def class_volumes(
    labels: np.ndarray, class_names: list[str], spacing: tuple[float, ...]
) -> list[ClassVolume]:
    """Voxels and millilitres (spacing in mm; 1 mL = 1000 mm^3) of every class, background included."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return [
        {"index": i, "name": name, "voxels": int(n), "volume_ml": round(float(n) * voxel_ml, 3)}
        for i, (name, n) in enumerate(zip(class_names, counts, strict=False))
    ]


# --------------------------------------------------------------------------------------------- the network


@dataclass
class Predictor:
    """The network to apply (one checkpoint, or the softmax average of several and/or mirror TTA) and what
    every case needs from its checkpoint(s): class names, intensity preprocessing, input size."""

    model: nn.Module
    ckpt: dict[str, Any]
    sources: list[str]
    class_names: list[str]
    preprocessing: dict[str, Any]
    tta: bool = False
    batch_size: int = 16
    precision: str = "fp32"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    notes: list[str] = field(default_factory=list)
    #: why ``precision`` (the one every case runs at) was chosen: "as requested", or ``auto``'s reason
    precision_choice: str = "as requested"
    engine: str = "torch"  #: or "onnxruntime": an ONNX model (fp32 only)
    #: the orientation code every scan is turned to; None: scans go in as stored, slices along the axial axis
    orientation: str | None = None
    _digests: list[str] | None = field(default=None, repr=False, compare=False)

    def source_digests(self) -> list[str]:
        """``NAME sha256:HEX`` of every source file (checkpoint or ONNX model), in member order: what names
        the network an output came from, whatever the files are called (every run has a ``last.pt``). The
        hashes are computed once per predictor. An in-memory checkpoint has no file and says so."""
        if self._digests is None:
            self._digests = [
                f"{Path(s).name} sha256:{file_sha256(s)}" if Path(s).is_file() else f"{s} (no file, no hash)"
                for s in self.sources
            ]
        return self._digests

    @property
    def name(self) -> str:
        """For the DICOM-SEG algorithm identification: network, ensemble size, TTA."""
        n = len(self.sources)
        return (
            f"organseg {self.ckpt.get('model_name')}"
            + (f" ensemble of {n}" if n > 1 else "")
            + (" + TTA" if self.tta else "")
        )


def load_predictor(
    checkpoint: str | Path | dict,
    *,
    ensemble: Sequence[str | Path] = (),
    models: Sequence[str] | None = None,
    tta: bool = False,
    batch_size: int = 16,
    precision: str = "fp32",
    device: str | torch.device | None = "auto",
) -> Predictor:
    """Build the network(s) once for any number of cases; every setting is checked here, before any scan.

    ``precision="auto"`` (the ``organseg predict`` default) runs bf16 where the hardware has fast bf16, else
    fp32, and fp32 for ONNX models (:func:`organseg.precision.resolve_precision`); the predictor's
    ``precision`` is the one chosen and ``precision_choice`` says why. Unlike ``test``, nothing is checked
    against fp32 here (a scan to predict has no ground truth, and a second fp32 pass would cost more than
    bf16 saves on one scan): ``organseg test`` measures the agreement on the split."""
    check_value("--batch-size", batch_size, POSITIVE_INT)
    dev = resolve_device(device)
    resolve_precision(precision, dev)  # a bad name or a precision the device lacks fails before any loading
    onnx = False
    if isinstance(checkpoint, dict):  # an in-memory checkpoint (tests, notebooks)
        model, ckpt = model_from_checkpoint(checkpoint, source="checkpoint")
        model, sources, notes = model.to(dev), ["checkpoint"], []
        if ensemble or tta:
            raise ConfigError("ensembles and TTA take checkpoint files")
        orientation, orientation_notes = network_orientation([ckpt], sources)
    else:
        members = load_members([checkpoint, *ensemble], dev, models=models)
        onnx = any(isinstance(m.model, OnnxModel) for m in members)
        if precision not in ("fp32", "auto") and onnx:
            raise ConfigError(f"--precision {precision}: ONNX models run in fp32; use the PyTorch checkpoint")
        model, ckpt = combined(members, tta), members[0].ckpt
        sources, notes = [m.source for m in members], [n for m in members for n in m.notes]
        orientation, orientation_notes = network_orientation([m.ckpt for m in members], sources)
        known = next((m.ckpt for m in members if m.ckpt.get("class_names")), None)
        if known is not None:
            ckpt = {**ckpt, "class_names": known["class_names"], "preprocessing": known.get("preprocessing")}
    notes += orientation_notes
    precision, choice = resolve_precision(
        precision, dev, fp32_only="ONNX Runtime runs fp32" if onnx else None
    )
    names = list(ckpt.get("class_names") or [])
    spec = dict(ckpt.get("preprocessing") or {})
    if not names:
        names, spec, said = reference_defaults(class_count(ckpt))
        notes.append(f"the checkpoint records no classes or preprocessing: using {said}")
    return Predictor(
        model=model,
        ckpt=ckpt,
        sources=sources,
        class_names=names,
        preprocessing=spec or {"kind": "none"},
        tta=tta,
        batch_size=batch_size,
        precision=precision,
        device=dev,
        notes=notes,
        orientation=orientation,
        precision_choice=choice,
        engine="onnxruntime" if onnx else "torch",
    )


# ------------------------------------------------------------------------------------------ inputs, outputs


@dataclass(frozen=True)
class Case:
    """One scan to predict and the files it gets."""

    input: Path
    name: str
    label: Path | None  # the NIfTI (or other image format) label map, None with --format dicom-seg
    sidecar: Path
    dicom_seg: Path | None = None
    viewer: Path | None = None
    overlay: Path | None = None
    series: str | None = None  # the SeriesInstanceUID of one series of a DICOM media export
    folder: Path | None = None  # the --out folder (one writer at a time), None when --out names the file

    @property
    def outputs(self) -> dict[str, Path]:
        found = {
            "--out": self.label,
            "--out's sidecar": self.sidecar,
            "DICOM-SEG": self.dicom_seg,
            "viewer": self.viewer,
            "--overlay": self.overlay,
        }
        return {k: v for k, v in found.items() if v is not None}

    def done(self) -> bool:
        """Whether the case's outputs are all there and read back whole (:meth:`check_done`)."""
        return self.check_done()[0]

    def check_done(self) -> tuple[bool, str | None]:
        """(done, why not): done when every output exists and reads back whole; a DICOM-SEG counts as done
        when the sidecar records that none could be written (an empty prediction has no segment). ``why
        not`` is None when an output is simply missing, else the damaged file and what is wrong with it (a
        0-byte or truncated label map, a sidecar that does not parse or names another input): the case is
        then redone, and the caller says so."""
        missing = [p for p in self.outputs.values() if not p.is_file()]
        if self.sidecar in missing or (missing and missing != [self.dicom_seg]):
            return False, None
        try:
            info = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return False, f"{self.sidecar} is damaged (not JSON: {type(exc).__name__})"
        if not isinstance(info, dict):
            return False, f"{self.sidecar} is damaged (not a JSON object)"
        problem = _sidecar_problem(info, self)
        if problem:
            return False, f"{self.sidecar} {problem}"
        if missing:  # only the DICOM-SEG: done if the sidecar says why there is none
            return (info.get("dicom_seg") or {}).get("written") is False, None
        for path in self.outputs.values():
            problem = _output_problem(path, self, info)
            if problem:
                return False, f"{path} is damaged ({problem})"
        return True, None


def _same_path(a: str | Path, b: str | Path) -> bool:
    try:
        return str(a) == str(b) or Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def _sidecar_problem(info: dict[str, Any], case: Case) -> str | None:
    """Why a sidecar that parses is not this case's: it names another input (or series) or another label
    map, or lacks the label map's shape."""
    if not _same_path(str(info.get("input")), case.input):
        return f"names another input ({info.get('input')})"
    if case.series is not None and info.get("series") != case.series:
        return f"names another series ({info.get('series')})"
    if case.label is not None and not _same_path(str(info.get("output")), case.label):
        return f"names another label map ({info.get('output')})"
    shape = info.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) for n in shape)):
        return "is damaged (no label map shape)"
    return None


_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def _output_problem(path: Path, case: Case, info: dict[str, Any]) -> str | None:
    """What is wrong with one existing output file of a finished case (None: it reads back whole). The
    label map's header and length (:func:`check_image_file`) and its shape against the sidecar's; the other
    files by their format's first and last bytes."""
    if path == case.sidecar:
        return None
    try:
        size = path.stat().st_size
        if size == 0:
            return "0 bytes"
        if path == case.label:
            try:
                shape, _ = check_image_file(path)
            except DataError as exc:
                return str(exc).removeprefix(f"{path}: ")
            if list(shape) != info["shape"]:
                return f"shape {list(shape)}, its sidecar says {info['shape']}"
            return None
        with open(path, "rb") as fh:
            head = fh.read(132)
            fh.seek(max(0, size - 64))
            tail = fh.read()
    except OSError as exc:
        return exc.strerror or str(exc)
    if path == case.dicom_seg and head[128:132] != b"DICM":
        return "no DICOM header"
    if path == case.overlay and not (head.startswith(_PNG_START) and tail.endswith(_PNG_END)):
        return "not a whole PNG image"
    if path == case.viewer and b"</html>" not in tail:
        return "the page is cut short"
    return None


def expand_inputs(items: Sequence[str | Path]) -> list[Path]:
    """Files, DICOM series folders, folders of scans (their image files and DICOM series subfolders) and
    glob patterns, in the order given (a folder's scans sorted by name)."""
    found: list[Path] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if not path.exists() and glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text))
            if not matches:
                raise DataError(f"{text}: no file or folder matches this pattern")
            found += matches
        elif path.is_dir() and not is_dicom_folder(path):
            scans = sorted(
                p
                for p in path.iterdir()
                if not p.name.startswith(".")
                and ((p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)) or is_dicom_folder(p))
            )
            # A folder with no scans in it is read as a DICOM series: the reader then says what is wrong.
            found += scans or [path]
        else:
            found.append(path)  # a scan or a series folder; a missing path fails as its own case
    return found


def _case_name(path: Path) -> str:
    return _stem(path.name.rstrip("/")) or "scan"


def _export_series(path: Path) -> list[tuple[str, str]]:
    """(case name, SeriesInstanceUID) of every series of a DICOM media export (a DICOMDIR folder): each is
    one case, named ``EXPORT_sN`` by its SeriesNumber (``EXPORT_K`` by its place when numbers are missing
    or repeated). One series keeps the export's name; a damaged export stays one case, which then fails with
    the reader's message."""
    try:
        found = find_series(path)
    except DataError:
        return [(_case_name(path), "")]
    if len(found) == 1:
        return [(_case_name(path), found[0].uid)]
    numbers = [s.number for s in found]
    by_number = all(numbers) and len(set(numbers)) == len(numbers)
    tags = [f"s{s.number}" if by_number else str(k + 1) for k, s in enumerate(found)]
    return [(f"{_case_name(path)}_{tag}", s.uid) for tag, s in zip(tags, found, strict=True)]


def check_options_apply(
    inputs: Sequence[Path], out: str | Path, *, formats: str = "nifti", series: str | None = None
) -> None:
    """Before any work: an option that cannot apply to these inputs is refused (one ConfigError), not
    ignored, and an optional extra an option needs must be installed. ``--series`` and a DICOM-SEG need a
    DICOM input (a series folder or a media export; a folder of scans has been expanded by now), a ``.dcm``
    ``--out`` is the DICOM-SEG's name, which ``--format nifti`` does not write."""
    # a missing input fails as its own case, with its own message
    dicom_inputs = [p for p in inputs if Path(p).is_dir() or not Path(p).exists()]
    if series is not None and not dicom_inputs:
        what = f"{inputs[0]} is not a DICOM folder" if len(inputs) == 1 else "no input is a DICOM folder"
        raise ConfigError(f"--series {series}: picks a series of a DICOM folder, but {what}; leave it out")
    if formats != "nifti" and inputs and not dicom_inputs:
        what = f"{inputs[0]} is not one" if len(inputs) == 1 else f"none of the {len(inputs)} inputs is one"
        raise ConfigError(
            f"--format {formats} needs a DICOM series as input (a DICOM-SEG references the images it "
            f"segments); {what}: use --format nifti"
        )
    if formats == "nifti" and str(out).lower().endswith(".dcm"):
        raise ConfigError(
            f"--out {out}: a .dcm name is the DICOM-SEG, which --format nifti does not write; name the label "
            f"map ({_stem(Path(out).name)}.nii.gz) or add --format dicom-seg or both"
        )
    if formats != "nifti":
        require_dicom_extra()


def plan_cases(
    inputs: Sequence[Path],
    out: str | Path,
    *,
    formats: str = "nifti",
    viewer: bool = False,
    overlay: str | Path | bool | None = None,
    series: str | None = None,
) -> list[Case]:
    """The output files of every case: ``--out`` names the label map when there is one case and it has an
    image suffix (or ``.dcm``); otherwise ``--out`` is a folder and each case is named after its input.

    A DICOM media export (a DICOMDIR folder) given without ``series`` is one case per series it holds
    (:func:`_export_series`); with ``series`` (a UID or a SeriesDescription) it is one case, that series."""
    if formats not in FORMATS:
        raise ConfigError(f"--format {formats!r}: expected one of {', '.join(FORMATS)}")
    check_options_apply(inputs, out, formats=formats, series=series)
    planned: list[tuple[Path, str, str | None]] = []
    for path in inputs:
        if series is None and is_media_export(path):
            planned += [(path, name, uid or None) for name, uid in _export_series(path)]
        else:
            planned.append((path, _case_name(path), None))
    out = Path(out)
    nifti, dicom = formats in ("nifti", "both"), formats in ("dicom-seg", "both")
    lower = out.name.lower()
    one_file = len(planned) == 1 and lower.endswith((*_OUT_SUFFIXES, ".dcm"))
    if not one_file and not out.is_dir() and "." in out.name:
        if len(inputs) == 1 and len(planned) > 1:
            raise ConfigError(
                f"--out {out}: {inputs[0]} is a DICOM media export of {len(planned)} series, each written as "
                "a case into a folder; give a folder, or pick one series with --series UID or DESCRIPTION"
            )
        if len(inputs) == 1:
            raise ConfigError(
                f"--out {out}: the label map needs an image suffix ({', '.join(_OUT_SUFFIXES)}), or give a "
                "folder"
            )
        raise ConfigError(f"--out {out}: {len(inputs)} inputs are written into a folder; give a folder")
    cases = []
    for path, name, uid in planned:
        if one_file:
            base = out.with_name(_stem(out.name))
            label_path = out if lower.endswith(_OUT_SUFFIXES) else base.with_name(base.name + ".nii.gz")
        else:
            base = out / name
            label_path = base.with_name(base.name + ".nii.gz")
        if isinstance(overlay, str | Path) and not one_file:
            raise ConfigError(
                f"--overlay {overlay}: names one figure, but {len(planned)} cases are written into the "
                f"folder {out}, each with its own NAME.png there: give --overlay without a file name"
            )
        if overlay is None or overlay is False:
            png = None
        elif overlay is True or not one_file:
            png = base.with_name(base.name + ".png")
        else:
            png = Path(overlay)
        cases.append(
            Case(
                input=path,
                name=name,
                label=label_path if nifti else None,
                sidecar=base.with_name(base.name + ".json"),
                dicom_seg=base.with_name(base.name + ".dcm") if dicom else None,
                viewer=base.with_name(base.name + ".html") if viewer else None,
                overlay=png,
                series=uid,
                folder=None if one_file else out,
            )
        )
    twice = sorted(n for n, k in Counter(c.name for c in cases).items() if k > 1)
    if twice and not one_file:
        raise ConfigError(f"inputs with the same name would write the same files: {', '.join(twice)}")
    return cases


def check_predict_outputs(
    checkpoint: str | Path | dict | Sequence[str | Path],
    input_path: str | Path,
    out: str | Path | Case,
    overlay: str | Path | None = None,
) -> None:
    """Before any work: every file of the case must be a writable place, distinct from the others, and none
    may be (or lie inside) the input scan or DICOM folder or a checkpoint."""
    sources = [checkpoint] if isinstance(checkpoint, str | Path | dict) else list(checkpoint)
    inputs: dict[str, Any] = {"INPUT": input_path}
    for n, src in enumerate(s for s in sources if not isinstance(s, dict)):
        inputs["CHECKPOINT" if n == 0 else f"--ensemble member {n}"] = src
    if isinstance(out, Case):
        outputs: dict[str, Any] = out.outputs
    else:
        outputs = {"--out": out, "--out's sidecar": sidecar_path(out), "--overlay": overlay}
    for what, path in outputs.items():
        if path is not None:
            check_output(path, inputs, what=what)
            check_output_file(path, what=what)
    check_distinct(outputs)


# --------------------------------------------------------------------------------------------- one case


def _write_views(
    predictor: Predictor,
    case: Case,
    image: np.ndarray,
    pred: np.ndarray,
    geometry: Geometry,
    info: Sidecar,
    written: list[Path],
    series_uid: str | None,
) -> None:
    """The optional outputs of one case (DICOM-SEG, viewer, overlay figure), each added to ``written`` as soon
    as it exists (so that a failure later removes it) and named in ``info``."""
    input_path, names = case.input, predictor.class_names
    if case.dicom_seg is not None and not pred.any():
        # An empty prediction is a result (no organ found), not a failure: the label map and the JSON are
        # still written, and the JSON says why there is no DICOM-SEG.
        info["dicom_seg"] = {"path": None, "written": False, "reason": NO_SEGMENT}
    elif case.dicom_seg is not None:
        params = {
            "network": str(predictor.ckpt.get("model_name")),
            "checkpoints": "; ".join(predictor.source_digests()),
            "organseg_version": __version__,
            "tta": str(predictor.tta),
        }
        info["dicom_seg"] = write_dicom_seg(
            pred,
            geometry,
            dicom_series_files(input_path, series_uid),
            names,
            case.dicom_seg,
            algorithm={"name": predictor.name, "version": __version__, "parameters": params},
        )
        info["dicom_seg"]["written"] = True
        written.append(case.dicom_seg)
    if case.viewer is not None:
        write_viewer(case.viewer, image, label=pred, geometry=geometry, class_names=names, title=case.name)
        written.append(case.viewer)
        info["viewer"] = str(case.viewer)
    if case.overlay is not None:
        plot_prediction(image, pred, names, case.overlay, geometry=geometry, title=Path(input_path).name)
        written.append(case.overlay)
        info["overlay"] = str(case.overlay)


def scan_turn(
    orientation: str | None, raw_geometry: Geometry, source: str
) -> tuple[Reorientation, OrientationRecord, list[str]]:
    """How a scan goes to the network: the turn of its (D, H, W) array, what the sidecar records of it and
    the warnings to print.

    With the network's ``orientation`` code: the scan's nearest orientation code from its direction matrix
    and the exact permutation and flips to ``orientation``; an oblique scan (tilted by more than
    :data:`~organseg.imageio.orientation.OBLIQUE_DEGREES`) gets a warning naming its tilt, and one 45
    degrees or
    more from the patient axes, or with a sheared direction matrix, is refused (DataError naming ``source``).
    Without (None): the array as stored with its axial axis first (the axis closest to head-foot), as
    before checkpoints recorded an orientation."""
    if orientation is None:
        axis = axial_axis(raw_geometry.direction)
        turn = Reorientation((axis, *[a for a in range(3) if a != axis]), (False, False, False))
        return turn, {"network": None, "scan": None}, []
    scan = scan_orientation(raw_geometry.direction, source)
    turn = reorientation(scan.code, orientation)
    record = OrientationRecord(network=orientation, scan=scan.code, tilt_degrees=round(scan.tilt, 3))
    warnings = []
    if scan.oblique:
        warnings.append(
            f"{source}: an oblique scan, its voxel axes {scan.tilt:.2f} degrees from the patient axes; "
            f"turned to {orientation} from its nearest orientation {scan.code} (no resampling: the network "
            "sees it tilted by that angle)"
        )
    return turn, record, warnings


def predict_case(
    predictor: Predictor, case: Case, *, series_uid: str | None = None, progress: bool = True
) -> Sidecar:
    """Predict one scan and write its files; returns the sidecar's content. On any failure the files this
    call wrote are removed again, so the case is left without a sidecar: not done, redone by the next call."""
    input_path = case.input
    series_uid = case.series if case.series is not None else series_uid
    if case.dicom_seg is not None and not Path(input_path).is_dir():
        raise ConfigError(
            f"{input_path}: --format dicom-seg needs a DICOM series as input (a DICOM-SEG references the "
            "images it segments); this input is not one: use --format nifti"
        )
    raw, geometry = read_image(input_path, series_uid=series_uid)
    # A NIfTI label map gets its input's placement fields as stored (ITK writes its own: see NiftiTransform).
    nifti = read_nifti_transform(input_path)
    notes = list(predictor.notes)
    if nifti is not None and nifti.sform_is_sheared():
        notes.append(
            "the input's sform is sheared: the voxels were read (and the viewer and overlay drawn) placed by "
            "its qform, as ITK reads it; the label map keeps both, as stored"
        )
    if min(raw.shape) < 2:
        raise DataError(f"{input_path}: image of shape {raw.shape} is a single slice; a 3-D scan is needed")
    # To the training slices' orientation (or, for a checkpoint without one, the axial axis first) and back.
    turn, orientation, warnings = scan_turn(predictor.orientation, geometry, str(input_path))
    if Path(input_path).is_dir():  # a DICOM series says its modality; a NIfTI file does not
        modality = select_series(find_series(input_path), series_uid, input_path).modality
        mismatch = modality_mismatch(predictor.preprocessing, modality, str(input_path))
        warnings += [mismatch] if mismatch else []
    image = apply_preprocessing(raw, predictor.preprocessing, source=str(input_path))
    start = time.perf_counter()
    pred = predict_turned(
        predictor.model,
        image,
        turn,
        checkpoint_patch_size(predictor.ckpt),
        predictor.batch_size,
        predictor.precision,
        predictor.device,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    names = predictor.class_names
    info: Sidecar = {
        "input": str(input_path),
        **({"series": series_uid} if series_uid is not None else {}),
        "output": str(case.label) if case.label else None,
        "checkpoint": predictor.sources[0] if len(predictor.sources) == 1 else None,
        "ensemble": predictor.sources if len(predictor.sources) > 1 else None,
        "tta": predictor.tta,
        "model_name": predictor.ckpt.get("model_name"),
        "notes": notes,
        "warnings": warnings,
        "shape": list(pred.shape),
        **geometry.to_dict(),
        "axial_axis": turn.axes[0],
        "orientation": {**orientation, "turn": {"axes": list(turn.axes), "flips": list(turn.flips)}},
        "preprocessing": predictor.preprocessing,
        "precision": predictor.precision,
        "precision_choice": predictor.precision_choice,
        "engine": "onnxruntime"
        if any(isinstance(m, OnnxModel) for m in predictor.model.modules())
        else "torch",
        "seconds": round(seconds, 3),
        "classes": class_volumes(pred, names, geometry.spacing),
    }
    written: list[Path] = []
    try:
        _write_views(predictor, case, image, pred, geometry, info, written, series_uid)
        # The label map and its sidecar appear together or not at all (a map without its JSON is half a
        # result).
        labels = pred.astype(np.uint8 if len(names) <= 256 else np.int32)
        files = [p for p in (case.label, case.sidecar) if p is not None]
        with staged(*files, suffix=True) as temps:
            if case.label is not None:
                keep = nifti if case.label.name.lower().endswith((".nii", ".nii.gz")) else None
                write_image(labels, geometry, temps[0], atomic=False, nifti_transform=keep)
            temps[-1].write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return info


def predict_file(
    checkpoint: str | Path | dict | Predictor,
    input_path: str | Path,
    out: str | Path,
    *,
    overlay: str | Path | None = None,
    batch_size: int = 16,
    precision: str = "fp32",
    device: str | torch.device | None = "cpu",
    series_uid: str | None = None,
    progress: bool = True,
    formats: str = "nifti",
    viewer: bool = False,
) -> Sidecar:
    """Predict one scan to ``out`` (the label map) and its JSON sidecar (class names and volumes);
    optionally an overlay PNG, a viewer page and a DICOM-SEG. Returns the sidecar's content."""
    (case,) = plan_cases([Path(input_path)], out, formats=formats, viewer=viewer, overlay=overlay)
    check_predict_outputs(checkpoint if not isinstance(checkpoint, Predictor) else [], input_path, case)
    predictor = (
        checkpoint
        if isinstance(checkpoint, Predictor)
        else load_predictor(checkpoint, batch_size=batch_size, precision=precision, device=device)
    )
    return predict_case(predictor, case, series_uid=series_uid, progress=progress)


# --------------------------------------------------------------------------------------------- many cases


@dataclass
class Outcome:
    case: Case
    status: str  # "done" | "skipped" | "failed"
    reason: str = ""
    info: Sidecar | None = None
    redone: str = ""  # why a case whose files were there was done again (a damaged output), "" otherwise


def predict_many(
    predictor: Predictor,
    cases: Sequence[Case],
    *,
    sources: Sequence[str | Path] = (),
    given: Sequence[str | Path] = (),
    overwrite: bool = False,
    series_uid: str | None = None,
    progress: bool = True,
    on_redo: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Every case in turn, one progress bar over the cases; a failing case is recorded and the rest go on.
    A case is skipped only when its outputs read back whole (:meth:`Case.check_done`); one with a damaged
    output is redone, and ``on_redo`` gets the line that says so before its work starts.

    Before any work, no output may land on (or in) an input: its own, another case's, or a folder of scans
    named in ``given`` (the inputs as the user gave them, before expansion)."""
    inputs = [c.input for c in cases] + [Path(g) for g in given if Path(g).exists()]
    index = input_index(inputs)  # once: per case it made the checks grow as the square of the cases
    for case in cases:
        check_predict_outputs(list(sources), case.input, case)
        check_outputs_against(case.outputs, inputs, index=index)
    outcomes: list[Outcome] = []
    folders = {case.folder for case in cases if case.folder is not None}
    bar = progress_bar(total=len(cases), desc="cases", unit="case", disable=not progress or len(cases) < 2)
    with folder_locks(folders, "predict"), bar:  # one writer per --out folder (organseg.locks)
        for case in cases:
            done, damaged = (False, None) if overwrite else case.check_done()
            if done:
                outcomes.append(Outcome(case, "skipped", "outputs exist (--overwrite replaces them)"))
            else:
                redo = f"redoing {case.name}: its previous output {damaged}" if damaged else ""
                if redo and on_redo is not None:
                    on_redo(redo)
                try:
                    inner = progress and len(cases) == 1  # the slice bar only when there is no case bar
                    info = predict_case(predictor, case, series_uid=series_uid, progress=inner)
                    outcomes.append(Outcome(case, "done", info=info, redone=redo))
                except (OrgansegError, OSError, RuntimeError, ValueError, MemoryError) as exc:
                    # One bad scan (a damaged file, an odd geometry, memory) must not stop the others.
                    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    outcomes.append(Outcome(case, "failed", reason, redone=redo))
            bar.update(1)
    return outcomes
