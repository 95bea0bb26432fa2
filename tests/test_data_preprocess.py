"""Intensity specs: every kind, its edge cases, and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from organseg.data.preprocess import (
    apply_preprocessing,
    ct_window_spec,
    foreground_percentiles,
    percentile_spec,
    validate_spec,
)
from organseg.errors import ConfigError, DataError


def test_ct_window_is_the_synapse_rule_bit_for_bit():
    hu = np.array([-1000, -125, 0, 75, 275, 3000], dtype=np.int16)
    out = apply_preprocessing(hu, ct_window_spec())
    assert out.dtype == np.float32
    # SAMed: float32, clip(-125, 275), (x + 125) / 400
    expected = (np.clip(hu.astype(np.float32), -125, 275) + np.float32(125)) / np.float32(400)
    assert np.array_equal(out, expected)
    assert out.tolist() == pytest.approx([0, 0, 0.3125, 0.5, 1, 1])


def test_ct_window_does_not_modify_input():
    hu = np.array([[-500.0, 500.0]])
    apply_preprocessing(hu, {"kind": "ct_window", "window": [-125, 275]})
    assert hu.tolist() == [[-500.0, 500.0]]


def test_percentile_spec_uses_stored_bounds():
    spec = percentile_spec(-50.0, 250.0)
    assert spec["percentiles"] == [0.5, 99.5]
    out = apply_preprocessing(np.array([-100.0, -50.0, 100.0, 250.0, 400.0]), spec)
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_foreground_percentiles_ignore_background_and_sample_per_case():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 100, (4, 50, 50))
    label = np.zeros(image.shape, int)
    label[:, 10:40, 10:40] = 1
    image[label == 0] = -1000  # background must not move the bounds
    lo, hi = foreground_percentiles([(image, label)], (0.5, 99.5), samples_per_case=1000, seed=1)
    assert 0 <= lo < 2 and 98 < hi <= 100
    with pytest.raises(DataError, match="no foreground"):
        foreground_percentiles([(image, np.zeros_like(label))])


def test_zscore_minmax_maps_clip_range_to_unit_interval():
    rng = np.random.default_rng(0)
    mr = rng.normal(500, 80, (6, 32, 32))
    out = apply_preprocessing(mr, {"kind": "zscore_minmax", "clip": [-3, 3]})
    assert out.min() >= 0 and out.max() <= 1
    # the mean maps to the middle of the range
    assert abs(float(out.mean()) - 0.5) < 0.01
    # invariant to affine changes of the scanner scale
    out2 = apply_preprocessing(mr * 3 + 10, {"kind": "zscore_minmax", "clip": [-3, 3]})
    assert np.allclose(out, out2, atol=1e-5)
    # a constant image has no contrast: zeros, not NaN
    assert not apply_preprocessing(np.full((2, 3, 3), 7.0), {"kind": "zscore_minmax"}).any()


def test_minmax_reproduces_acdc_volume_scaling():
    raw = np.array([[10.0, 20.0], [30.0, 50.0]])
    assert apply_preprocessing(raw, {"kind": "minmax"}).tolist() == [[0.0, 0.25], [0.5, 1.0]]
    robust = apply_preprocessing(np.arange(101.0), {"kind": "minmax", "percentiles": [10, 90]})
    assert robust[10] == 0.0 and robust[90] == 1.0 and robust[50] == pytest.approx(0.5)
    assert not apply_preprocessing(np.ones((2, 2)), {"kind": "minmax"}).any()


def test_none_accepts_unit_range_and_rejects_raw_scans():
    x = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    assert np.array_equal(apply_preprocessing(x, {"kind": "none"}), x)
    with pytest.raises(DataError, match=r"scan\.nii\.gz: intensities span \[-1000, 400\]"):
        apply_preprocessing(np.array([-1000.0, 400.0]), {"kind": "none"}, source="scan.nii.gz")


def test_nan_voxels_are_an_error_naming_the_source():
    with pytest.raises(DataError, match="ct.nii.gz: image has 1 NaN/inf"):
        apply_preprocessing(np.array([0.0, np.nan, 1.0]), ct_window_spec(), source="ct.nii.gz")


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "gamma"},
        {"window": [0, 1]},
        {"kind": "ct_window"},
        {"kind": "ct_window", "window": [300, -100]},
        {"kind": "ct_window", "window": "wide"},
        {"kind": "percentile", "lower": 0.0},
        {"kind": "minmax", "percentiles": [-5, 101]},
    ],
)
def test_bad_specs_are_config_errors(spec):
    with pytest.raises(ConfigError):
        validate_spec(spec)
