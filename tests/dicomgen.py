"""Tiny generated DICOM CT series for the tests (pydicom): plain series folders, several series in one folder,
gantry-tilted stacks and standard media exports (a DICOMDIR written by pydicom's FileSet, with the PT/ST/SE
sub-folders a CD or a PACS export has). Nothing here reads the shared data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def ct_slices(
    *,
    series_uid: str,
    study_uid: str,
    description: str = "CT abdomen",
    number: int = 1,
    slices: int = 4,
    size: int = 8,
    spacing: float = 2.0,
    tilt_deg: float = 0.0,
    seed: int = 0,
) -> list:
    """``slices`` CT Image Storage datasets of ``size`` x ``size`` pixels, 0.75 mm pixels, ``spacing`` mm
    apart along the patient's head-foot axis. ``tilt_deg`` tilts the image plane about the patient's
    left-right axis (a gantry tilt) while the table still moves along head-foot, as a tilted CT stores it."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    t = math.radians(tilt_deg)
    out = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", number, k + 1
        ds.SeriesDescription = description
        ds.FrameOfReferenceUID = study_uid + ".1"
        ds.ImageOrientationPatient = [1, 0, 0, 0, round(math.cos(t), 8), round(-math.sin(t), 8)]
        ds.ImagePositionPatient = [0.0, 0.0, -k * spacing]
        ds.PixelSpacing = [0.75, 0.75]
        ds.SliceThickness = spacing
        if tilt_deg:
            ds.GantryDetectorTilt = tilt_deg
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = rng.integers(900, 1200, (size, size), dtype=np.int16).tobytes()
        out.append(ds)
    return out


def write_series(folder: str | Path, datasets: list, prefix: str = "IM") -> list[Path]:
    """Each dataset as its own file ``PREFIX0001.dcm`` ... in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{prefix}{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_dicomdir(folder: str | Path, *series: list) -> Path:
    """A standard media export of ``series`` in ``folder``: DICOMDIR plus PT*/ST*/SE*/IM* files."""
    from pydicom.fileset import FileSet

    fs = FileSet()
    for datasets in series:
        for ds in datasets:
            fs.add(ds)
    fs.write(str(folder))
    return Path(folder) / "DICOMDIR"


def uid(n: int) -> str:
    """A fixed, valid UID for test series ``n``."""
    return f"1.2.826.0.1.3680043.8.498.{n}"
