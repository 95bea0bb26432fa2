"""DICOM-SEG output: written from a label map over the real DICOM series, read back with highdicom, equal
voxel for voxel and in patient space; codes, colours, algorithm identification; the missing-extra message."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from organseg.data.classes import ACDC_CLASSES, SYNAPSE_CLASSES
from organseg.errors import ConfigError, DataError

hd = pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")

from organseg.imageio.volumes import read_image  # noqa: E402
from organseg.prediction.dicomseg import anatomy_code, write_dicom_seg  # noqa: E402

ALG = {"name": "organseg swin_unet", "version": "9.9", "parameters": {"checkpoint": "best.pt"}}


@pytest.fixture(scope="module")
def series(totalseg_dir):
    folder = totalseg_dir / "example_ct_dicom"
    image, geometry = read_image(folder)
    return sorted(folder.iterdir()), image, geometry


def _labels(shape) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[2:10, 100:200, 150:300] = 5  # liver
    lab[5:15, 300:350, 100:180] = 2  # right kidney
    lab[6:8, 320:330, 400:420] = 3  # left kidney
    lab[0, :10, :10] = 8  # pancreas, one slice: frames without it are omitted
    return lab


def test_written_seg_equals_the_label_map(series, tmp_path):
    files, image, geometry = series
    labels = _labels(image.shape)
    out = tmp_path / "scan_seg.dcm"
    info = write_dicom_seg(labels, geometry, files, list(SYNAPSE_CLASSES), out, algorithm=ALG)
    seg = hd.seg.segread(out)
    assert [s["class"] for s in info["segments"]] == [2, 3, 5, 8]
    names = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert names == ["right kidney", "left kidney", "liver", "pancreas"]

    # Voxel for voxel, through the source images' own SOP Instance UIDs.
    import pydicom

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uids = [str(h.file_meta.MediaStorageSOPInstanceUID) for h in headers]
    numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    back = np.zeros_like(numbers, dtype=np.uint8)
    for s in info["segments"]:
        back[numbers == s["segment"]] = s["class"]
    # Patient space: each source image's slice in the label map from its position along the slice normal.
    d, dz = np.asarray(geometry.direction).reshape(3, 3), geometry.spacing[0]
    ks = [
        round(float(np.dot(np.asarray(h.ImagePositionPatient, float) - geometry.origin, d[:, 2])) / dz)
        for h in headers
    ]
    np.testing.assert_array_equal(back, labels[ks])
    # And the SEG's own frame positions are those of the label-map slices they came from.
    for frame in seg.PerFrameFunctionalGroupsSequence:
        pos = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        k = round(float(np.dot(pos - geometry.origin, d[:, 2])) / geometry.spacing[0])
        want = np.asarray(geometry.origin) + k * geometry.spacing[0] * d[:, 2]
        np.testing.assert_allclose(pos, want, atol=1e-3)
    # BINARY: one frame per segment and slice that holds it; empty frames are left out.
    frames = sum(int((labels == s["class"]).any(axis=(1, 2)).sum()) for s in info["segments"])
    assert len(seg.PerFrameFunctionalGroupsSequence) == frames == 21


def test_codes_colours_algorithm(series, tmp_path):
    files, image, geometry = series
    out = tmp_path / "seg.dcm"
    write_dicom_seg(_labels(image.shape), geometry, files, list(SYNAPSE_CLASSES), out, algorithm=ALG)
    seg = hd.seg.segread(out)
    first = seg.SegmentSequence[0]
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    ptype = first.SegmentedPropertyTypeCodeSequence[0]
    assert (ptype.CodeValue, ptype.CodeMeaning) == ("64033007", "Kidney")
    assert ptype.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"
    assert seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # liver
    colours = {tuple(s.RecommendedDisplayCIELabValue) for s in seg.SegmentSequence}
    assert len(colours) == 4  # distinct, as the overlays
    alg = first.SegmentationAlgorithmIdentificationSequence[0]
    assert alg.AlgorithmName == "organseg swin_unet" and alg.AlgorithmVersion == "9.9"
    assert str(seg.Manufacturer) == "organseg" and str(seg.SegmentationType) == "BINARY"


def test_anatomy_codes_of_every_known_class():
    for name in [*SYNAPSE_CLASSES[1:], *ACDC_CLASSES[1:]]:
        (value, scheme, meaning), _ = anatomy_code(name, 1)
        assert scheme == "SCT" and value.isdigit(), name
    assert anatomy_code("tumour", 4)[0] == ("class4", "99ORGANSEG", "tumour")


def test_label_map_of_another_series_is_refused(series, tmp_path):
    files, image, geometry = series
    with pytest.raises(DataError, match="source images for 19 label-map slices|off the label map"):
        write_dicom_seg(
            _labels(image.shape)[:19],
            geometry,
            files,
            list(SYNAPSE_CLASSES),
            tmp_path / "s.dcm",
            algorithm=ALG,
        )
    with pytest.raises(DataError, match="no foreground class"):
        write_dicom_seg(
            np.zeros(image.shape, np.uint8),
            geometry,
            files,
            list(SYNAPSE_CLASSES),
            tmp_path / "s.dcm",
            algorithm=ALG,
        )
    assert not (tmp_path / "s.dcm").exists()


def test_missing_extra_names_it(monkeypatch, series, tmp_path):
    files, image, geometry = series
    real_import = builtins.__import__

    def no_highdicom(name, *args, **kwargs):
        if name.startswith("highdicom"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_highdicom)
    with pytest.raises(ConfigError, match=r"pip install 'organseg\[dicom\]'"):
        write_dicom_seg(
            _labels(image.shape), geometry, files, list(SYNAPSE_CLASSES), tmp_path / "s.dcm", algorithm=ALG
        )
