"""DICOM Segmentation objects (DICOM-SEG) from organseg label maps, for PACS, OHIF and 3D Slicer.

A DICOM-SEG is written beside (never instead of) the NIfTI label map, for a DICOM input only: it references
the source series image by image (SOP Instance UIDs, frame positions and orientation taken from the source
files), so a viewer lays it over the scan it came from. Without a source series there is nothing to
reference, and organseg says so rather than invent one.

One segment per class present in the label map, in class order, numbered from 1 (DICOM wants consecutive
segment numbers), labelled with the class name, coloured as the PNG overlays, and coded with SNOMED CT
anatomy codes (category "Anatomical Structure"; the kidneys as "Kidney" with a laterality modifier, as
DICOM's segmentation context groups do). Class names organseg does not know (a user's own dataset) get a
private "99ORGANSEG" code whose meaning is the name. The segmentation is BINARY (what current viewers read),
frames that hold no segment are omitted, and the algorithm (organseg version, network, checkpoint) is
identified in every segment.

Needs the optional extra ``organseg[dicom]`` (highdicom, which brings pydicom).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from organseg import __version__
from organseg.errors import ConfigError, DataError
from organseg.fileio import atomic_write_bytes
from organseg.imageio.volumes import Geometry
from organseg.reporting.palette import class_color

# SNOMED CT codes (value, meaning) of the organs organseg's datasets name, plus a laterality modifier.
_ANATOMY: dict[str, tuple[str, str, str | None]] = {
    "spleen": ("78961009", "Spleen", None),
    "right kidney": ("64033007", "Kidney", "right"),
    "left kidney": ("64033007", "Kidney", "left"),
    "gallbladder": ("28231008", "Gallbladder", None),
    "liver": ("10200004", "Liver", None),
    "stomach": ("69695003", "Stomach", None),
    "aorta": ("15825003", "Aorta", None),
    "pancreas": ("15776009", "Pancreas", None),
    "rv": ("53085002", "Right ventricle", None),
    "right ventricle": ("53085002", "Right ventricle", None),
    "myo": ("49848007", "Left ventricle myocardium", None),
    "myocardium": ("49848007", "Left ventricle myocardium", None),
    "lv": ("87878005", "Left ventricle", None),
    "left ventricle": ("87878005", "Left ventricle", None),
}
_LATERALITY = {"right": ("24028007", "Right"), "left": ("7771000", "Left")}
_CATEGORY = ("123037004", "Anatomical Structure")  # DICOM CID 7150
#: Why no DICOM-SEG is written for a prediction without foreground (a SEG needs at least one segment).
NO_SEGMENT = "the prediction holds no foreground class; a DICOM-SEG needs at least one segment"

#: One segment of a written DICOM-SEG: its ``segment`` number (1..n), the ``class`` index it holds, the class
#: ``name`` and its ``code`` (value, scheme, meaning: SNOMED CT where organseg knows the organ, else a
#: private ``99ORGANSEG`` code).
SegmentRecord = TypedDict("SegmentRecord", {"segment": int, "class": int, "name": str, "code": list[str]})


class _DicomSegPath(TypedDict):
    path: str | None  #: the DICOM-SEG file; None when none was written


class DicomSegRecord(_DicomSegPath, total=False):
    """The sidecar's ``dicom_seg`` (``predict --format dicom-seg`` or ``both``), in the order written.

    Written (:func:`write_dicom_seg`, then ``written: true``): ``path``, ``segments`` (one
    :data:`SegmentRecord` per class present), ``referenced_series`` (the source SeriesInstanceUID),
    ``derived_uids`` ({DICOM keyword: UID} that an anonymised source lacked and had to be derived) and
    ``notes`` (one per derived UID). Not written because the prediction is empty: ``path`` None, ``written``
    false and ``reason`` (:data:`NO_SEGMENT`)."""

    segments: list[SegmentRecord]
    referenced_series: str
    derived_uids: dict[str, str]
    notes: list[str]
    written: bool
    reason: str


def _highdicom():
    try:
        import highdicom  # noqa: PLC0415 (the optional organseg[dicom] extra)
        import pydicom  # noqa: PLC0415 (the optional organseg[dicom] extra)
    except ImportError:
        raise ConfigError(
            "--format dicom-seg needs the optional extra: pip install 'organseg[dicom]' (highdicom, pydicom)"
        ) from None
    return highdicom, pydicom


def require_dicom_extra() -> None:
    """Before any work: ConfigError naming ``pip install 'organseg[dicom]'`` when the extra is missing."""
    _highdicom()


def anatomy_code(name: str, index: int) -> tuple[tuple[str, str, str], tuple[str, str, str] | None]:
    """((value, scheme, meaning), laterality modifier or None) for a class name."""
    hit = _ANATOMY.get(name.strip().lower())
    if hit is None:
        return (f"class{index}", "99ORGANSEG", name or f"class {index}"), None
    value, meaning, side = hit
    if side is None:
        return (value, "SCT", meaning), None
    side_value, side_meaning = _LATERALITY[side]
    return (value, "SCT", meaning), (side_value, "SCT", side_meaning)


def read_source_series(files: Sequence[str | Path]) -> list[Any]:
    """The header of every file of the source series (pixel data not read).

    Anonymised files sometimes keep SOP Class / Instance UID only in the file meta header: they are taken from
    there (in memory; the files are not touched) since a DICOM-SEG must reference each image by them."""
    _, pydicom = _highdicom()
    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises InvalidDicomError, OSError, ...
            raise DataError(f"{f}: cannot read as DICOM ({type(exc).__name__}: {exc})") from None
        meta = getattr(ds, "file_meta", None)
        for key in ("SOPClassUID", "SOPInstanceUID"):
            from_meta = str(meta.get("MediaStorage" + key, "") or "") if meta is not None else ""
            if not str(ds.get(key, "") or "") and from_meta:
                setattr(ds, key, from_meta)
        for key in ("SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns"):
            if not ds.get(key):
                raise DataError(f"{f}: no {key}: a DICOM-SEG cannot reference this image")
        out.append(ds)
    return out


def _frame_indices(sources: list[Any], shape: tuple[int, ...], geometry: Geometry, where: str) -> list[int]:
    """The label-map slice (array axis 0) each source image is; the in-plane axes must be the images' own."""
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)  # columns: array x, y, z directions
    origin = np.asarray(geometry.origin, dtype=np.float64)
    dz = float(geometry.spacing[0])
    idx = []
    for ds in sources:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not (np.allclose(iop[:3], d[:, 0], atol=1e-3) and np.allclose(iop[3:], d[:, 1], atol=1e-3)):
            raise DataError(
                f"{where}: image {ds.SOPInstanceUID} has orientation {iop.round(4).tolist()}, the label map "
                f"{d[:, :2].T.round(4).tolist()}: not the series the label map was read from"
            )
        if (int(ds.Rows), int(ds.Columns)) != shape[1:]:
            raise DataError(
                f"{where}: image {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns}, the label map {shape[1:]}"
            )
        z = float(np.dot(np.asarray([float(v) for v in ds.ImagePositionPatient]) - origin, d[:, 2])) / dz
        k = int(round(z))
        if abs(z - k) > 1e-2 or not 0 <= k < shape[0]:
            raise DataError(f"{where}: image {ds.SOPInstanceUID} lies at slice {z:.3f}, off the label map")
        idx.append(k)
    if sorted(idx) != list(range(shape[0])):
        raise DataError(f"{where}: {len(idx)} source images for {shape[0]} label-map slices")
    return idx


def _segment_frames(labels: np.ndarray, order: list[int], out: Path) -> tuple[list[int], np.ndarray]:
    """The foreground classes present, and one frame per source image (in the sources' order) that holds
    segment numbers 1..n instead of class indices (DICOM wants consecutive segment numbers)."""
    present = [int(c) for c in np.unique(labels) if c != 0]
    if not present:
        raise DataError(f"{out}: {NO_SEGMENT}")
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint8)
    lut[present] = np.arange(1, len(present) + 1)
    return present, lut[labels[order]]


def _complete_source_headers(sources: list[Any], pydicom: Any) -> tuple[dict[str, str], list[str]]:
    """Fill, in memory, the study/series UIDs and patient attributes highdicom insists on.

    Returns the UIDs that had to be derived and a note for each, so the sidecar says what was invented."""
    notes = []
    derived: dict[str, str] = {}
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not str(sources[0].get(key, "") or ""):
            # Anonymised series without them: the SEG still references every image by its SOP Instance UID.
            entropy = [str(ds.SOPInstanceUID) for ds in sources] + [key]
            derived[key] = str(pydicom.uid.generate_uid(entropy_srcs=entropy))
            for ds in sources:
                setattr(ds, key, derived[key])
            notes.append(f"the source series has no {key}: one derived from its images' SOP Instance UIDs")
    for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber"):
        for ds in sources:
            if key not in ds:
                setattr(ds, key, "")
    return derived, notes


def _segment_descriptions(
    hd: Any, present: list[int], class_names: Sequence[str], algorithm: dict[str, str]
) -> tuple[list[Any], list[SegmentRecord]]:
    """One highdicom SegmentDescription per present class (numbered from 1), and its sidecar summary."""
    from pydicom.sr.codedict import codes  # noqa: PLC0415 (pydicom: the optional organseg[dicom] extra)

    alg = hd.AlgorithmIdentificationSequence(
        name=algorithm.get("name", "organseg"),
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.get("version", __version__),
        source="organseg",
        parameters=algorithm.get("parameters") or None,
    )
    category = hd.sr.CodedConcept(_CATEGORY[0], "SCT", _CATEGORY[1])
    descriptions, segments = [], []
    for number, cls in enumerate(present, start=1):
        name = class_names[cls] if cls < len(class_names) else f"class {cls}"
        (value, scheme, meaning), modifier = anatomy_code(name, cls)
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=category,
            segmented_property_type=hd.sr.CodedConcept(value, scheme, meaning),
            algorithm_type="AUTOMATIC",
            algorithm_identification=alg,
            display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in class_color(cls))),
        )
        if modifier:
            item = desc.SegmentedPropertyTypeCodeSequence[0]
            item.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept(*modifier)]
        descriptions.append(desc)
        segments.append({"segment": number, "class": cls, "name": name, "code": [value, scheme, meaning]})
    return descriptions, segments


def write_dicom_seg(
    labels: np.ndarray,
    geometry: Geometry,
    source_files: Sequence[str | Path],
    class_names: Sequence[str],
    out: str | Path,
    *,
    algorithm: dict[str, str],
) -> DicomSegRecord:
    """Write ``labels`` (the (D, H, W) label map read from ``source_files`` with ``geometry``) as a DICOM-SEG.

    ``algorithm`` holds ``name`` (e.g. "organseg swin_unet"), ``version`` and ``parameters``: strings that
    go into every segment's AlgorithmParameters as ``key=value`` pairs (``predict`` gives the network, each
    checkpoint's file name and SHA-256, the organseg version and TTA). The series description is the name
    followed by "segmentation", with "organseg" in front unless the name starts with it. Returns a summary
    for the sidecar: path, segments written (class index, name, code), the referenced series and any UID
    that had to be derived."""
    hd, pydicom = _highdicom()
    out = Path(out)
    labels = np.asarray(labels)
    sources = read_source_series(source_files)
    order = _frame_indices(sources, labels.shape, geometry, str(out))
    present, frames = _segment_frames(labels, order, out)
    derived, notes = _complete_source_headers(sources, pydicom)
    descriptions, segments = _segment_descriptions(hd, present, class_names, algorithm)
    name = str(algorithm.get("name") or "organseg").strip()
    description = f"{name if name.startswith('organseg') else f'organseg {name}'} segmentation"[:64]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="organseg",
        manufacturer_model_name=algorithm.get("name", "organseg")[:64],
        software_versions=__version__,
        device_serial_number="none",
        content_label="ORGANSEG",
        content_description=description,
        series_description=description,
    )
    buf = io.BytesIO()
    seg.save_as(buf)
    atomic_write_bytes(out, buf.getvalue())
    return {
        "path": str(out),
        "segments": segments,
        "referenced_series": str(sources[0].SeriesInstanceUID),
        "derived_uids": derived,
        "notes": notes,
    }
