"""Paired statistics of two networks: against SciPy on fixed numbers, Holm by hand, the bootstrap by a plain
loop, identical networks, determinism under the seed, seeds resampled with the cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from organseg.errors import DataError
from organseg.study.paired import (
    ALPHA,
    bootstrap_diff,
    by_subject,
    case_subjects,
    holm,
    paired_difference,
    paired_from_runs,
    paired_table,
    wilcoxon_p,
)

A = np.array([0.81, 0.77, 0.90, 0.62, 0.85, 0.70, 0.88, 0.79, 0.74, 0.83])
B = np.array([0.84, 0.75, 0.93, 0.70, 0.86, 0.78, 0.87, 0.85, 0.80, 0.88])


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max: 0.06 last
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=0, atol=1e-15)
    out = holm([0.01, math.nan, 0.04])  # NaN is not part of the family: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    np.testing.assert_array_equal(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1, monotone
    assert holm([]).size == 0 and math.isnan(holm([math.nan])[0])


def test_wilcoxon_and_difference_against_scipy() -> None:
    r = paired_difference(A, B)
    assert r["p"] == stats.wilcoxon(B - A).pvalue == stats.wilcoxon(B, A).pvalue
    assert r["diff"] == pytest.approx(B.mean() - A.mean(), abs=1e-15)
    assert (r["a"], r["b"]) == (pytest.approx(A.mean()), pytest.approx(B.mean()))
    assert (r["wins"], r["losses"], r["n"]) == (8, 2, 10)
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    # HD95: lower is better, so the same numbers give the wins to A
    h = paired_difference(A, B, higher_is_better=False)
    assert (h["wins"], h["losses"]) == (2, 8) and h["p"] == r["p"]


def test_bootstrap_equals_a_plain_loop() -> None:
    """One seed per network: the distribution is the mean difference over cases drawn with replacement, in
    the generator's order (cases first)."""
    dist = bootstrap_diff(A[None], B[None], resamples=500, seed=3)
    rng = np.random.default_rng(3)
    cases = rng.integers(0, A.size, (500, A.size))
    np.testing.assert_allclose(dist, (B - A)[cases].mean(axis=1), rtol=0, atol=1e-15)
    r = paired_difference(A, B, resamples=500, seed=3)
    lo, hi = np.percentile((B - A)[cases].mean(axis=1), [2.5, 97.5])
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo, abs=1e-15), pytest.approx(hi, abs=1e-15))


def test_identical_networks_give_zero_and_no_significance() -> None:
    for a in (A, np.stack([A, A, A])):  # one seed, and three seeds with equal values
        r = paired_difference(a, a.copy())
        assert (r["diff"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0)
        assert r["p"] == 1.0 and (r["wins"], r["losses"]) == (0, 0)
    vals = np.stack([np.stack([A, B, 1 - A], axis=1)])  # (1 seed, 10 cases, 3 organs)
    for metric in ("dice", "hd95"):
        for rec in paired_table(vals, vals.copy(), ["x", "y", "z"], metric):
            assert rec["diff"] == 0.0 and rec["ci_low"] == rec["ci_high"] == 0.0
            assert rec["p"] == rec["p_holm"] == 1.0 and not rec["significant"]


def test_deterministic_under_the_seed() -> None:
    a = np.stack([A, A + 0.02])
    b = np.stack([B, B - 0.01, B + 0.03])
    r1 = paired_difference(a, b, seed=7)
    assert paired_difference(a, b, seed=7) == r1
    assert paired_difference(a, b, seed=8)["ci_low"] != r1["ci_low"]
    assert r1["diff"] == pytest.approx(b.mean() - a.mean(), abs=1e-15)


def test_seeds_are_resampled_with_the_cases() -> None:
    """A's three seeds differ by a constant: resampling only cases would give a zero-width interval."""
    a = np.stack([np.full(10, v) for v in (0.6, 0.7, 0.8)])
    b = np.full((1, 10), 0.75)
    r = paired_difference(a, b)
    assert r["diff"] == pytest.approx(0.05)
    assert r["ci_low"] < 0.0 < 0.05 < r["ci_high"]  # seed means range from 0.6 to 0.8
    assert r["ci_low"] >= 0.75 - 0.8 - 1e-12 and r["ci_high"] <= 0.75 - 0.6 + 1e-12


def test_nan_pairs_and_the_mean_row() -> None:
    """HD95 pairs only where both have a value; the mean row averages, per case, the organs both have."""
    a = np.array([[[1.0, 5.0], [2.0, np.nan], [3.0, 7.0], [4.0, 8.0]]])  # (1 seed, 4 cases, 2 organs)
    b = np.array([[[2.0, np.nan], [1.0, 9.0], [3.0, 6.0], [6.0, 9.0]]])
    recs = {r["organ"]: r for r in paired_table(a, b, ["o1", "o2"], "hd95", resamples=200)}
    assert recs["o1"]["n"] == 4 and recs["o2"]["n"] == 2
    assert recs["o2"]["diff"] == pytest.approx((6 + 9) / 2 - (7 + 8) / 2)
    # case means over the common organs: cases 0 and 1 have o1 only, cases 2 and 3 both organs
    ma = np.array([1.0, 2.0, 5.0, 6.0])
    mb = np.array([2.0, 1.0, 4.5, 7.5])
    assert recs["mean"]["diff"] == pytest.approx(mb.mean() - ma.mean())
    assert recs["mean"]["p"] == pytest.approx(stats.wilcoxon(mb - ma).pvalue)
    assert (recs["mean"]["wins"], recs["mean"]["losses"]) == (2, 2)  # lower HD95 wins
    none = paired_difference(np.full(3, np.nan), np.ones(3))
    assert none["n"] == 0 and none["diff"] is None and none["p"] is None


def test_a_clear_difference_is_significant_after_holm() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.8, (1, 12, 3))
    b = a + np.array([0.05, 0.0, -0.001])  # organ 0 clearly better, organ 1 equal, organ 2 a hair worse
    b[0, :, 2] += rng.normal(0, 0.02, 12)
    recs = paired_table(a, b, ["x", "y", "z"], "dice")
    x, y, z, mean = recs
    assert x["p"] == pytest.approx(stats.wilcoxon(b[0, :, 0] - a[0, :, 0]).pvalue)  # exact: 2 / 2^12
    ps = [r["p"] for r in (x, y, z)]
    np.testing.assert_allclose([r["p_holm"] for r in (x, y, z)], holm(ps))
    assert x["significant"] and x["p_holm"] < ALPHA and x["ci_low"] > 0 and x["wins"] == 12
    assert not y["significant"] and y["p"] == 1.0
    assert mean["organ"] == "mean" and mean["p_holm"] == mean["p"]


def test_wilcoxon_edge_cases() -> None:
    assert wilcoxon_p(np.zeros(5)) == 1.0
    assert math.isnan(wilcoxon_p(np.array([])))
    d = np.array([0.0, 0.0, 0.3, -0.1, 0.2])  # zeros dropped, as SciPy's default
    assert wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue)


def _write_per_case(folder, values: dict[str, dict[str, float]]) -> str:
    folder.mkdir(parents=True)
    cases = [
        {
            "case": case,
            "classes": {
                name: {"reference": {"dice": v, "hd95": 1.0}, "corrected": {"dice": v, "hd95": None}}
                for name, v in organs.items()
            },
        }
        for case, organs in values.items()
    ]
    (folder / "per_case.json").write_text(json.dumps(cases))
    return str(folder)


def test_paired_from_runs_reads_per_case_files(tmp_path) -> None:
    a = _write_per_case(
        tmp_path / "a", {"c1": {"liver": 0.9, "spleen": 0.8}, "c2": {"liver": 0.7, "spleen": 0.6}}
    )
    b = _write_per_case(
        tmp_path / "b", {"c2": {"liver": 0.8, "spleen": 0.6}, "c1": {"liver": 0.9, "spleen": 0.9}}
    )
    recs, cases, subjects = paired_from_runs(
        [a], [b], ["background", "liver", "spleen"], [("Liver", 1), ("Spleen", 2)], resamples=100
    )
    assert cases == ["c1", "c2"]
    assert subjects is None  # these per-case files predate subjects: each volume is its own unit
    assert {r["unit_of_analysis"] for r in recs} == {"volume"}
    got = {(r["protocol"], r["metric"], r["organ"]): r for r in recs}
    assert len(got) == 2 * 2 * 3
    assert got[("reference", "dice", "Liver")]["diff"] == pytest.approx(0.05)
    assert got[("reference", "dice", "Spleen")]["diff"] == pytest.approx(0.05)
    assert got[("corrected", "hd95", "Liver")]["n"] == 0  # no value on either side
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "per_case.json").write_text("{not json")
    with pytest.raises(DataError, match="per_case.json: cannot read the per-case results"):
        paired_from_runs([a], [str(tmp_path / "bad")], ["background", "liver"], [("Liver", 1)])


def test_verdict_states_only_what_the_records_give() -> None:
    from organseg.study.verdict import verdict_markdown

    rng = np.random.default_rng(1)
    a = rng.uniform(0.6, 0.8, (1, 12, 2))
    b = a + np.array([0.05, -0.001])
    recs = []
    for protocol in ("reference", "corrected"):
        for metric in ("dice", "hd95"):
            for r in paired_table(a, b, ["Liver", "Spleen"], metric, resamples=500):
                recs.append(
                    {
                        "protocol": protocol,
                        "metric": metric,
                        "model_a": "unet",
                        "model_b": "swin_unet",
                        "sweep": {},
                        "seeds_a": 1,
                        "seeds_b": 1,
                        **r,
                    }
                )
    cost = [
        {"model": "unet", "sweep": {}, "params": 2e6, "gflops_per_image": 4.0},
        {"model": "swin_unet", "sweep": {}, "params": 3e6, "gflops_per_image": 1.0},
    ]
    text = " ".join(verdict_markdown(recs, cost, {"cases": 12, "alpha": ALPHA}))
    assert "DSC per organ, ahead: swin_unet on Liver; unet on Spleen" in text
    assert "significant: Liver (swin_unet better, +5.00" in text
    assert "Per image swin_unet needs 4.0× fewer FLOPs than unet" in text
    assert "smallest p the exact Wilcoxon" not in text  # 12 cases can reach significance
    few = " ".join(verdict_markdown(recs, cost, {"cases": 4, "alpha": ALPHA}))
    assert "smallest p the exact Wilcoxon test can give is 0.12" in few
    # a third network against the same baseline: the baseline's cost is told once, each pair's FLOP ratio
    third = [{**r, "model_b": "nnunet_2d"} for r in recs]
    cost.append({"model": "nnunet_2d", "sweep": {}, "params": 5e6, "gflops_per_image": 8.0})
    three = " ".join(verdict_markdown(recs + third, cost, {"cases": 12, "alpha": ALPHA}))
    assert three.count("unet has 2.00 M parameters") == 1 and three.count("nnunet_2d has 5.00 M") == 1
    assert "Per image unet needs 2.0× fewer FLOPs than nnunet_2d" in three


# ------------------------------------------------------------------------------------------ subjects


def test_by_subject_means_each_subjects_volumes() -> None:
    x = np.array([[1.0, 3.0, 5.0, np.nan], [2.0, 2.0, np.nan, np.nan]])
    means, names, volumes = by_subject(x, ["p1", "p1", "p2", "p3"])
    assert names == ["p1", "p2", "p3"]
    np.testing.assert_allclose(means, [[2.0, 5.0, np.nan], [2.0, np.nan, np.nan]])
    assert volumes.tolist() == [2, 0, 0]  # volumes with a value in every seed


def test_paired_difference_counts_subjects_not_volumes() -> None:
    # Two frames per patient: the patient's value is the mean of its frames, n is 3 patients.
    a = np.array([0.5, 0.7, 0.6, 0.6, 0.9, 0.9])
    b = np.array([0.6, 0.8, 0.5, 0.9, 1.0, 1.0])
    subjects = ["p1", "p1", "p2", "p2", "p3", "p3"]
    r = paired_difference(a, b, subjects=subjects, resamples=200)
    assert (r["n"], r["n_subjects"], r["n_volumes"], r["unit_of_analysis"]) == (3, 3, 6, "subject")
    d = np.array([0.1, 0.1, 0.1])  # per-patient differences: (0.1+0.1)/2, (-0.1+0.3)/2, (0.1+0.1)/2
    assert r["diff"] == pytest.approx(d.mean())
    assert (r["wins"], r["losses"]) == (3, 0)
    assert r["p"] == pytest.approx(stats.wilcoxon(np.array([0.1, 0.1, 0.1])).pvalue)
    # The same numbers with each patient's frames already averaged: subjects are what is counted.
    one = paired_difference(np.array([0.6, 0.6, 0.9]), np.array([0.7, 0.7, 1.0]), resamples=200)
    assert one["diff"] == pytest.approx(r["diff"]) and one["p"] == pytest.approx(r["p"])
    assert one["ci_low"] == pytest.approx(r["ci_low"]) and one["ci_high"] == pytest.approx(r["ci_high"])
    assert one["unit_of_analysis"] == "volume"


def test_bootstrap_draws_whole_subjects() -> None:
    # A subject with two identical frames must weigh as one subject, not two: the interval equals the
    # interval of the per-subject values.
    rng = np.random.default_rng(0)
    per_subject = rng.normal(0.05, 0.1, 12)
    frames = np.repeat(per_subject, 2)
    subjects = np.repeat([f"p{i}" for i in range(12)], 2).tolist()
    zeros = np.zeros(24)
    grouped = paired_difference(zeros, frames, subjects=subjects, resamples=400, seed=5)
    single = paired_difference(np.zeros(12), per_subject, resamples=400, seed=5)
    assert (grouped["ci_low"], grouped["ci_high"]) == pytest.approx((single["ci_low"], single["ci_high"]))
    assert grouped["n"] == 12 and grouped["n_volumes"] == 24


def test_paired_table_mean_row_by_subject() -> None:
    a = np.array([[[0.5, 0.7], [0.7, 0.9], [0.4, 0.4], [0.6, 0.6]]])  # (seeds, volumes, organs)
    b = a + 0.1
    recs = paired_table(a, b, ["x", "y"], "dice", subjects=["p1", "p1", "p2", "p2"], resamples=100)
    mean = recs[-1]
    assert mean["organ"] == "mean" and mean["n"] == 2 and mean["n_volumes"] == 4
    assert mean["diff"] == pytest.approx(0.1)


def test_case_subjects_must_agree(tmp_path) -> None:
    runs = [[{"case": "c1", "subject": "p1"}], [{"case": "c1", "subject": "p2"}]]
    with pytest.raises(DataError, match="case c1 belongs to subject 'p1' in one run and 'p2'"):
        case_subjects(runs, ["c1"])
    assert case_subjects([[{"case": "c1", "subject": "p1"}]], ["c1"]) == ["p1"]
