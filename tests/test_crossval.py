"""Subjects and cross-validation: which patient each volume is, splits disjoint by patient, K folds in which
every subject is held out once, ``organseg compare --folds`` pooling the out-of-fold predictions, and the fold
models as one ensemble.

A tiny ACDC-layout folder (patients with two frames, training slices and validation volumes) is written here;
the study runs on a 32x32 SYNTHETIC phantom in the Synapse layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from organseg.cli.main import main
from organseg.data import open_dataset
from organseg.data.detect import resolve_dataset
from organseg.data.folds import FoldView, apply_data_config, fold_subjects, subject_rule
from organseg.data.phantom import write_phantom_set
from organseg.data.prepare import prepare_synapse
from organseg.errors import ConfigError, DataError
from organseg.evaluation.evaluate import EvaluationResult
from organseg.results import ResultsSummary
from organseg.run import ResultsDir, RunDir
from organseg.study import collect
from organseg.study.comparison import Comparison, CrossValidationRecord, FoldMeans, FoldRow, FoldSpread
from organseg.study.conditions import still_improving
from organseg.study.paired import read_per_case
from record_keys import Keys, check_comparison, check_per_case, check_summary

# ------------------------------------------------------------------------------------------- ACDC layout


def write_acdc(root: Path, train: dict[str, int], val: list[str], *, gaps: str | None = None) -> Path:
    """An ACDC folder: ``train`` maps patientNNN_frameMM to its number of slices (numbered from 1, as this
    copy of ACDC does), ``val`` names volumes. Image values encode (volume, slice) so stacking can be
    checked."""
    (root / "slices").mkdir(parents=True)
    (root / "volumes").mkdir()
    names = []
    for v, (volume, depth) in enumerate(train.items()):
        for k in range(1, depth + 1):
            if volume == gaps and k == 2:
                continue
            name = f"{volume}_slice_{k}"
            with h5py.File(root / "slices" / f"{name}.h5", "w") as fh:
                fh["image"] = np.full((8, 8), (v * 10 + k) / 100, np.float32)
                fh["label"] = np.full((8, 8), k % 4, np.uint8)
            names.append(name)
    for volume in val:
        with h5py.File(root / "volumes" / f"{volume}.h5", "w") as fh:
            fh["image"] = np.zeros((3, 8, 8), np.float32)
            fh["label"] = np.zeros((3, 8, 8), np.uint8)
    (root / "train_slices.list").write_text("\n".join(names) + "\n")
    (root / "val.list").write_text("\n".join(val) + "\n")
    return root


def _patients(n: int, depth: int = 3) -> dict[str, int]:
    return {f"patient{p:03d}_frame{f:02d}": depth for p in range(1, n + 1) for f in (1, 2)}


def test_acdc_subject_is_the_patient_and_training_volumes_are_rebuilt(tmp_path) -> None:
    val = ["patient009_frame01", "patient009_frame02"]
    ds = open_dataset(write_acdc(tmp_path / "acdc", _patients(3), val))
    assert ds.subject_of("patient002_frame02") == "patient002"
    assert ds.case_ids("train") == [f"patient00{p}_frame0{f}" for p in (1, 2, 3) for f in (1, 2)]
    vol = ds.volume("patient002_frame01")  # volume index 2 in write order; slices 1..3 in order
    assert vol.image.shape == (3, 8, 8)
    np.testing.assert_allclose(vol.image[:, 0, 0], [0.21, 0.22, 0.23], rtol=1e-6)
    assert vol.label[:, 0, 0].tolist() == [1, 2, 3]


def test_acdc_slice_gaps_are_one_error(tmp_path) -> None:
    ds = open_dataset(write_acdc(tmp_path / "acdc", _patients(2), [], gaps="patient001_frame01"))
    with pytest.raises(DataError, match=r"slices of patient001_frame01 are numbered \[1, 3\], with gaps"):
        ds.volume("patient001_frame01")


def test_acdc_per_patient_leak_check_names_subject_and_both_lists(tmp_path) -> None:
    # patient002's frame 1 is trained on, its frame 2 is a validation volume: one patient on two sides.
    train = {k: v for k, v in _patients(2).items() if k != "patient002_frame02"}
    root = write_acdc(tmp_path / "acdc", train, ["patient002_frame02"])
    with pytest.raises(DataError) as err:
        open_dataset(root)
    msg = str(err.value)
    assert "subject 'patient002' is on two sides of the split" in msg
    assert "train_slices.list" in msg and "val.list" in msg and "patient002_frame02" in msg


# -------------------------------------------------------------------------------------------- subjects


def test_subject_rule_from_a_pattern_and_a_json_map(tmp_path) -> None:
    rule = subject_rule(r"^(sub-\d+)_")
    assert rule("sub-01_ses-2") == "sub-01"
    with pytest.raises(DataError, match="does not find a subject in case 'other'"):
        rule("other")
    table = tmp_path / "subjects.json"
    table.write_text(json.dumps({"a": "P1", "b": "P1"}))
    rule = subject_rule(str(table))
    assert rule("b") == "P1"
    with pytest.raises(DataError, match="case 'c' has no subject"):
        rule("c")
    with pytest.raises(ConfigError, match="neither a .json file nor a regular expression"):
        subject_rule("(unclosed")
    assert subject_rule(None) is None


def test_a_subject_map_that_joins_two_splits_is_refused(tmp_path) -> None:
    root = write_acdc(tmp_path / "acdc", _patients(2), ["patient009_frame01"])
    ds = open_dataset(root)
    # patient001 (training) and patient009 (validation) mapped to one subject: a leak.
    with pytest.raises(DataError, match="subject 'patient00' is on two sides of the split"):
        apply_data_config(ds, {"subjects": r"^(patient00)"})


# --------------------------------------------------------------------------------------------- folds


def test_every_subject_is_held_out_exactly_once(tmp_path) -> None:
    ds = open_dataset(write_acdc(tmp_path / "acdc", _patients(7), []))
    folds = fold_subjects(ds, 3, seed=5)
    flat = [s for f in folds for s in f]
    assert sorted(flat) == [f"patient{p:03d}" for p in range(1, 8)]
    assert sorted(len(f) for f in folds) == [2, 2, 3]  # sizes differ by at most one
    assert fold_subjects(ds, 3, seed=5) == folds  # seeded
    assert fold_subjects(ds, 3, seed=6) != folds
    for k in range(3):
        view = FoldView(ds, k, 3, 5)
        val, train = view.case_ids("val"), view.case_ids("train")
        assert {view.subject_of(c) for c in val} == set(folds[k])
        assert not {view.subject_of(c) for c in val} & {view.subject_of(c) for c in train}
        assert len(val) == 2 * len(folds[k])  # both frames of each held-out patient
        assert set(view.train_slice_cases()) == {view.subject_of(c) for c in train}
        assert len(view.train_slices()) == 3 * len(train)
        assert view.info()["held_out"] == folds[k]


def test_fold_options_are_checked(tmp_path) -> None:
    ds = open_dataset(write_acdc(tmp_path / "acdc", _patients(2), []))
    with pytest.raises(ConfigError, match="only 2 subject|has 2 subject"):
        fold_subjects(ds, 3, seed=0)
    with pytest.raises(ConfigError, match=r"data.fold=2 must be in 0..1"):
        FoldView(ds, 2, 2, 0)


def test_resolve_dataset_applies_the_configured_fold(tmp_path) -> None:
    root = write_acdc(tmp_path / "acdc", _patients(4), ["patient009_frame01"])
    view = resolve_dataset(None, {"data": {"root": str(root), "fold": 1, "folds": 2, "fold_seed": 3}}, "x")
    assert isinstance(view, FoldView) and view.fold == 1
    assert "patient009_frame01" not in view.case_ids("val")  # the dataset's own validation stays out
    plain = resolve_dataset(None, {"data": {"root": str(root)}}, "x")
    assert plain.case_ids("val") == ["patient009_frame01"]


def _nnunet(root: Path, cases: list[str], splits: list[dict] | None = None) -> Path:
    import SimpleITK as sitk

    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for c in cases:
        img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32))
        lab = sitk.GetImageFromArray((np.arange(192).reshape(3, 8, 8) % 2).astype(np.uint8))
        sitk.WriteImage(img, str(root / "imagesTr" / f"{c}_0000.nii.gz"))
        sitk.WriteImage(lab, str(root / "labelsTr" / f"{c}.nii.gz"))
    meta = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "x": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    if splits is not None:
        (root / "splits_final.json").write_text(json.dumps(splits))
    return root


def test_nnunet_splits_final_are_the_folds_and_subjects_can_be_mapped(tmp_path) -> None:
    cases = ["s1_a", "s1_b", "s2_a", "s3_a"]
    splits = [
        {"train": ["s2_a", "s3_a"], "val": ["s1_a", "s1_b"]},
        {"train": ["s1_a", "s1_b"], "val": ["s2_a", "s3_a"]},
    ]
    root = _nnunet(tmp_path / "nn", cases, splits)
    cfg = {"data": {"root": str(root), "fold": 0, "folds": 2, "subjects": r"^(s\d)_"}}
    view = resolve_dataset(None, cfg, "x")
    assert view.case_ids("val") == ["s1_a", "s1_b"] and view.held_out == ["s1"]
    assert view.case_ids("train") == ["s2_a", "s3_a"]
    with pytest.raises(ConfigError, match="defines 2 folds but data.folds is 3"):
        resolve_dataset(None, {"data": {**cfg["data"], "folds": 3}}, "x")
    # A map that puts one subject's cases in two folds is one error.
    bad = [
        {"train": ["s1_b", "s2_a", "s3_a"], "val": ["s1_a"]},
        {"train": ["s1_a", "s2_a", "s3_a"], "val": ["s1_b"]},
    ]
    bad_root = _nnunet(tmp_path / "nn2", cases, bad)
    with pytest.raises(DataError, match="subject 's1' is held out in folds 0 and 1"):
        resolve_dataset(None, {"data": {**cfg["data"], "root": str(bad_root)}}, "x")


def test_pooled_result_equals_the_per_case_records(tmp_path) -> None:
    rng = np.random.default_rng(1)
    shape = (4, 2, 2)
    result = EvaluationResult(
        split="val",
        class_names=("bg", "a", "b"),
        case_ids=["p1_f1", "p1_f2", "p2_f1", "p3_f1"],
        reference=rng.random(shape),
        corrected=np.where(rng.random(shape) > 0.3, rng.random(shape), np.nan),
        presence=rng.random(shape) > 0.4,
        spacings=[None, (1.0, 1.0, 2.0), None, None],
        surface=rng.random(shape),
        nsd_tolerance=[1.0, 2.0],
        subjects=["p1", "p1", "p2", "p3"],
    )
    again = EvaluationResult.from_per_case(result.per_case(), result.class_names, "val", [1.0, 2.0])
    assert again.summary() == result.summary()
    assert again.per_case() == result.per_case()
    assert result.summary()["subjects"] == 3


# ------------------------------------------------------------------------------------- compare --folds


@pytest.fixture(scope="module")
def cv_study(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cv")
    write_phantom_set(root / "raw", 5, size=32, num_slices=4, progress=False)
    prepare_synapse(root / "raw", root / "data", train_cases=[1, 2, 3, 4], test_cases=[5], progress=False)
    for model, args in {
        "unet": {"width": 0.125},
        "swin_unet": {"embed_dim": 12, "num_heads": [1, 2, 3, 4], "window_size": 2},
    }.items():
        cfg = {
            "model": {"name": model, "args": args},
            "train": {
                "img_size": 32,
                "batch_size": 4,
                "max_iterations": 2,
                "augment": "none",
                "progress": False,
                "threads": 1,
                "lr_scaling": "none",
            },
            "val": {"every": 0},
        }
        (root / f"tiny_{model}.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "out"
    argv = [
        "compare",
        "--data",
        str(root / "data"),
        "--models",
        "unet",
        "swin_unet",
        "--folds",
        "2",
        "--preset",
        str(root / "tiny_{model}.yaml"),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-report",
        "--note",
        "The recipe was chosen on no patient of this study.",
    ]
    assert main(argv) == 0
    return {
        "out": out,
        "data": root / "data",
        "root": root,
        "comparison": json.loads((out / "comparison.json").read_text()),
    }


def test_cv_study_trains_every_fold_and_writes_the_splits(cv_study) -> None:
    out = cv_study["out"]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == [f"{m}__seed1234_fold{k}" for m in ("swin_unet", "unet") for k in (0, 1)]
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits) == 2
    held = [s for f in splits for s in f["val_subjects"]]
    assert sorted(held) == ["case0001", "case0002", "case0003", "case0004"]  # each subject once
    for f in splits:
        assert not set(f["train_subjects"]) & set(f["val_subjects"])
    for k in (0, 1):  # each fold model was tested on exactly its held-out volumes
        per_case = read_per_case(out / "runs" / f"unet__seed1234_fold{k}" / "results" / "val_last")
        assert [c["case"] for c in per_case] == splits[k]["val"]


def test_cv_statistics_pool_the_out_of_fold_predictions(cv_study) -> None:
    out, c = cv_study["out"], cv_study["comparison"]
    pooled = read_per_case(out / "cv" / "unet__seed1234")
    assert sorted(p["case"] for p in pooled) == ["case0001", "case0002", "case0003", "case0004"]
    folds = [read_per_case(out / "runs" / f"unet__seed1234_fold{k}" / "results" / "val_last") for k in (0, 1)]
    assert sorted(pooled, key=lambda p: p["case"]) == sorted(folds[0] + folds[1], key=lambda p: p["case"])
    summary = ResultsDir(out / "cv" / "unet__seed1234").summary()
    tolerance = summary["corrected"].get("nsd_tolerance")
    recomputed = EvaluationResult.from_per_case(folds[0] + folds[1], summary["class_names"], "val", tolerance)
    recomputed = recomputed.summary()
    assert summary["reference"] == recomputed["reference"] and summary["subjects"] == 4
    unet = next(g for g in c["groups"] if g["model"] == "unet")
    assert unet["reference"]["mean_dice"]["mean"] == pytest.approx(summary["reference"]["mean_dice"])
    paired = c["paired"]
    assert paired and {r["unit_of_analysis"] for r in paired} == {"subject"}
    assert {r["n_subjects"] for r in paired if r["organ"] == "mean" and r["metric"] == "dice"} == {4}
    assert c["paired_settings"]["subjects"] == 4 and c["paired_settings"]["cases"] == 4
    assert [(r["model"], r["fold"]) for r in c["folds"]] == [
        ("unet", 0),
        ("unet", 1),
        ("swin_unet", 0),
        ("swin_unet", 1),
    ]
    assert c["cross_validation"]["folds"] == 2 and c["cross_validation"]["subjects"] == 4
    assert len(c["runs"]) == 4  # the fold runs themselves


def test_cv_verdict_states_its_conditions(cv_study) -> None:
    md = (cv_study["out"] / "comparison.md").read_text()
    verdict = md.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    opening = "**Conditions.** This verdict holds for 2-fold cross-validation over 4 subjects (4 volumes)"
    assert opening in verdict
    assert "Checkpoint: last.pt, chosen by no data" in verdict
    assert "unet: 2 run(s), from scratch, all training data" in verdict
    assert "2 iterations" in verdict and "8 images seen" in verdict
    assert "4 subject(s) (4 volume(s))" in verdict
    assert "## Cross-validation folds" in md
    assert "The recipe was chosen on no patient of this study." in md
    cond = cv_study["comparison"]["conditions"]
    assert cond["folds"] == [2] and cond["models"]["unet"]["iterations"] == 2


def test_collect_of_a_cv_study_gives_the_same_comparison(cv_study) -> None:
    again = collect(cv_study["out"])
    assert again["paired"] == cv_study["comparison"]["paired"]
    assert again["folds"] == cv_study["comparison"]["folds"]


def test_cv_fold_models_as_one_ensemble(cv_study, tmp_path) -> None:
    out = cv_study["out"]
    before = (out / "runs" / "unet__seed1234_fold0" / "results" / "val_last" / "per_case.json").read_bytes()
    assert (
        main(
            [
                "test",
                str(out),
                "--models",
                "unet",
                "--split",
                "test",
                "--no-report",
                "--no-viewer",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "ens"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "ens" / "summary.json").read_text())
    assert len(summary["ensemble"]) == 2 and summary["cases"] == 1  # the dataset's test case
    # Without --out, the members' results go inside the ensemble's folder, never into a fold run's own.
    assert (
        main(
            [
                "test",
                str(out),
                "--models",
                "unet",
                "--split",
                "test",
                "--checkpoint",
                "last",
                "--no-report",
                "--no-viewer",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    fold0 = out / "runs" / "unet__seed1234_fold0" / "results"
    assert (fold0 / "test_last_ensemble2" / "members").is_dir() and not (fold0 / "test_last").exists()
    assert (fold0 / "val_last" / "per_case.json").read_bytes() == before
    # predict takes the study too: one label map from the fold ensemble.
    scan = next((cv_study["root"] / "raw" / "img").glob("*.nii.gz"))
    assert (
        main(
            [
                "predict",
                str(out),
                str(scan),
                "--models",
                "unet",
                "--out",
                str(tmp_path / "pred.nii.gz"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    sidecar = json.loads((tmp_path / "pred.json").read_text())
    members = [Path(m).parts[-3] for m in sidecar["ensemble"]]
    assert members == ["unet__seed1234_fold0", "unet__seed1234_fold1"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "test"], "--folds tests each fold's model on its held-out subjects"),
        (["--checkpoint", "best"], "best.pt is chosen on the held-out fold"),
        (["--set", "data.fold=0,1"], "use --folds for data.fold"),
        (["--folds", "1"], "argument --folds: expected an integer in [2, 100]"),
    ],
)
def test_cv_options_that_cannot_apply_are_one_line(cv_study, tmp_path, capsys, extra, message) -> None:
    argv = [
        "compare",
        "--data",
        str(cv_study["data"]),
        "--models",
        "unet",
        "--out",
        str(tmp_path / "o"),
        "--preset",
        str(cv_study["root"] / "tiny_{model}.yaml"),
        "--device",
        "cpu",
    ]
    if "--folds" not in extra:
        argv += ["--folds", "2"]
    try:
        code = main(argv + extra)
    except SystemExit as exc:  # argparse's own type errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_nnunet_folds_divide_every_labelled_case_in_the_study_and_the_runs(tmp_path) -> None:
    # Without splits_final.json an nnU-Net folder keeps a seeded 20 % validation split of its own; a
    # cross-validation divides all labelled cases, and compare's splits.json must be what each run sees.
    from organseg.data.detect import layout_options

    cases = [f"c{i}" for i in range(5)]
    root = _nnunet(tmp_path / "nn", cases)
    assert len(open_dataset(root).case_ids("train")) == 4  # the reader's own split
    study = open_dataset(root, **layout_options(root, {"fold": 0}))
    assert study.case_ids("train") == cases
    run = resolve_dataset(None, {"data": {"root": str(root), "fold": 1, "folds": 5}}, "x")
    assert FoldView(study, 1, 5, 12345).held_out == run.held_out
    assert sorted(run.case_ids("train") + run.case_ids("val")) == cases


def test_info_prints_volumes_and_subjects(tmp_path, capsys) -> None:
    root = write_acdc(tmp_path / "acdc", _patients(3), ["patient009_frame01", "patient009_frame02"])
    assert main(["info", "--data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "train     6 volume(s) of    3 subject(s)" in out
    assert "val       2 volume(s) of    1 subject(s)" in out
    assert main(["info", "--data", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["val"] == {"volumes": 2, "subjects": 1}


def _run_with(tmp_path: Path, records: list[dict]) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    run.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_still_improving_reads_validation_then_training_loss(tmp_path) -> None:
    def val(it: int, dice: float) -> dict:
        return {"kind": "val", "iter": it, "epoch": 0, "mean_dice": dice}

    def loss(values: list[float]) -> list[dict]:
        return [{"kind": "train", "iter": i + 1, "loss": v} for i, v in enumerate(values)]

    rising = _run_with(tmp_path / "a", loss([1.0] * 8) + [val(6, 0.60), val(8, 0.70)])
    assert still_improving(rising, 8) == (True, "validation DSC")
    flat = _run_with(tmp_path / "b", loss([1.0] * 8) + [val(6, 0.700), val(8, 0.702)])
    assert still_improving(flat, 8) == (False, "validation DSC")
    # Validated at the end only: the training loss of the last quarter against the third.
    falling = _run_with(tmp_path / "c", loss([1.0] * 4 + [0.9, 0.9, 0.5, 0.5]) + [val(8, 0.7)])
    assert still_improving(falling, 8) == (True, "training loss")
    level = _run_with(tmp_path / "d", loss([1.0] * 4 + [0.5, 0.5, 0.5, 0.5]) + [val(8, 0.7)])
    assert still_improving(level, 8) == (False, "training loss")
    assert still_improving(_run_with(tmp_path / "e", []), None) == (None, "no record")


def test_cv_comparison_and_pooled_results_have_exactly_their_records_keys(cv_study) -> None:
    keys = Keys()
    check_comparison(keys, cv_study["comparison"])
    for record in (Comparison, FoldRow, FoldMeans, CrossValidationRecord, FoldSpread):
        keys.complete(record)
    pooled = cv_study["out"] / "cv" / "unet__seed1234"
    summary = json.loads((pooled / "summary.json").read_text())
    check_summary(keys, summary)
    check_per_case(keys, read_per_case(pooled))
    pooled_fields = {
        "pooled_folds",
        "folds",
        "checkpoint",
        "precision",
        "data",
        "inference_seconds",
        "slices",
        "inference_seconds_per_case",
        "inference_seconds_per_slice",
    }
    assert set(summary) == ResultsSummary.__required_keys__ | pooled_fields
