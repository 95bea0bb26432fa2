"""The right data, the right runs (issue 27): a run knows its dataset (where and what) and every later use
checks it; checkpoints carry a checksum; results are reused only when they are the test of the checkpoint
as it is, on the whole split; a results folder is complete only with its summary.json, written last; a
failing write keeps what was there; ``compare --collect`` counts a run once and keeps out of run folders."""

from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import write_presets
from organseg import fileio
from organseg.checkpoint import atomic_torch_save, read_checkpoint
from organseg.cli.main import main
from organseg.data.phantom import write_phantom_set
from organseg.data.prepare import prepare_synapse
from organseg.errors import CheckpointError, OutputError
from organseg.fileio import staged
from organseg.reporting import report
from organseg.run import RunDir
from organseg.study import collect, parse_sets, run_study

SETS = [
    *("--set", "model.args.width=0.0625"),
    *("--set", "train.img_size=32"),
    *("--set", "train.batch_size=2"),
    *("--set", "train.max_iterations=1"),
    *("--set", "val.every=0"),
    *("--set", "train.progress=false"),
]
TEST = ["--no-report", "--device", "cpu"]


def one_line_error(capsys, argv: list, *needles: object) -> str:
    """Exit 2 and one error line holding every needle (progress lines of ``test`` aside); returns it."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("test cases:", "\r"))]
    assert len(lines) == 1 and lines[0].startswith(f"organseg {argv[0]}: error:"), err
    for n in needles:
        assert str(n) in lines[0], lines[0]
    return lines[0]


def data(world: Path) -> list[str]:
    """``--data`` of the run's own dataset: for the tests of other faults than finding it."""
    return ["--data", str(world / "a" / "syn")]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """``a/syn`` (2 train, 2 test cases) and ``b/syn`` (the same training cases, 1 test case: another dataset
    of the same name relative to ``b/work``), and ``run`` trained from ``a/work`` with ``--data ../syn``."""
    root = tmp_path_factory.mktemp("right")
    write_phantom_set(root / "raw", 4, size=32, num_slices=4, progress=False)
    prepare_synapse(root / "raw", root / "a" / "syn", train_cases=[1, 2], test_cases=[3, 4], progress=False)
    prepare_synapse(root / "raw", root / "b" / "syn", train_cases=[1, 2], test_cases=[4], progress=False)
    for side in ("a", "b"):
        (root / side / "work").mkdir()
    cwd = os.getcwd()
    os.chdir(root / "a" / "work")
    try:
        assert main(["train", "unet_synapse", "--data", "../syn", "--out", str(root / "run"), *SETS]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def run(world, tmp_path) -> Path:
    """A copy of the trained run, for a test to change."""
    return Path(shutil.copytree(world / "run", tmp_path / "run"))


def _edit_last(run: Path, fn) -> None:
    path = RunDir(run).checkpoint("last")
    ckpt = read_checkpoint(path)
    fn(ckpt)
    atomic_torch_save(ckpt, path)


def _summary(run: Path, name: str = "test_last") -> dict:
    return json.loads((run / "results" / name / "summary.json").read_text())


# ------------------------------------------------------------------------------------ the run's dataset


def test_a_run_records_where_its_data_really_are(world) -> None:
    ckpt = read_checkpoint(RunDir(world / "run").checkpoint("last"))
    record = ckpt["dataset"]
    assert record["root"] == "../syn" and record["resolved"] == str((world / "a" / "syn").resolve())
    assert record["fingerprint"]["splits"]["test"]["cases"] == 2
    assert RunDir(world / "run").env().raw["cwd"] == str(world / "a" / "work")


def test_test_without_data_from_another_folder_tests_the_runs_dataset(world, run, monkeypatch) -> None:
    monkeypatch.chdir(world / "b" / "work")  # where ../syn is another dataset
    assert main(["test", str(run), *TEST]) == 0
    s = _summary(run)
    assert s["data"] == str((world / "a" / "syn").resolve()) and s["cases"] == 2


def test_a_changed_dataset_is_one_line_naming_both(world, run, capsys) -> None:
    # The recorded folder now holds another dataset (as if replaced since the run trained).
    _edit_last(run, lambda c: c["dataset"].update(resolved=str(world / "b" / "syn")))
    err = one_line_error(capsys, ["test", str(run), *TEST], "last.pt", "a", "other test cases")
    assert str(world / "b" / "syn") in err
    assert not (run / "results" / "test_last").exists()


def test_another_dataset_given_with_data_is_tested_with_a_warning(world, run, capsys) -> None:
    assert main(["test", str(run), "--data", str(world / "b" / "syn"), *TEST]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and str(world / "b" / "syn") in err and "trained on the dataset" in err


def test_an_old_run_with_a_relative_root_is_ambiguous_unless_its_folder_is_known(world, run, capsys) -> None:
    _edit_last(run, lambda c: c.pop("dataset"))
    env = json.loads((run / "env.json").read_text())
    (run / "env.json").write_text(json.dumps({k: v for k, v in env.items() if k != "cwd"}))
    one_line_error(capsys, ["test", str(run), *TEST], "data.root", "../syn", "ambiguous", "--data")
    (run / "env.json").write_text(json.dumps(env))  # the folder it was started from is known: no guess
    assert main(["test", str(run), *TEST]) == 0
    assert _summary(run)["cases"] == 2


def test_resume_on_another_dataset_is_refused(world, run, capsys) -> None:
    argv = ["train", "unet_synapse", "--data", str(world / "b" / "syn"), "--out", str(run), "--resume", *SETS]
    one_line_error(capsys, argv, "last.pt", str(world / "b" / "syn"), "other test cases")


# ------------------------------------------------------------------------------------ checkpoint checksum


def _flip(path: Path, count: int = 256) -> None:
    """Flip ``count`` bytes inside the largest tensor's data (what torch.load reads back without a word)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    for k in range(min(count, info.file_size)):
        raw[start + k] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_checkpoint_are_a_checksum_mismatch(world, run, capsys) -> None:
    last = RunDir(run).checkpoint("last")
    _flip(last)
    torch.load(last, weights_only=True)  # torch itself does not notice
    resume = [
        "train",
        "unet_synapse",
        "--data",
        str(world / "a" / "syn"),
        "--out",
        str(run),
        "--resume",
        *SETS,
    ]
    for argv in (resume, ["test", str(run), "--checkpoint", "last", *data(world), *TEST]):
        one_line_error(capsys, argv, "last.pt", "checksum mismatch (the file changed after it was written)")


def test_checksum_round_trip_and_old_checkpoints_without_one(tmp_path) -> None:
    ckpt = {
        "format": "organseg-checkpoint/1",
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "iteration": 7,
    }
    atomic_torch_save(ckpt, tmp_path / "new.pt")
    assert "checksum" in torch.load(tmp_path / "new.pt", weights_only=True)
    back = read_checkpoint(tmp_path / "new.pt")
    assert "checksum" not in back and back["iteration"] == 7
    # A number of the pickled structure changed (the tensors intact): the digest covers it too.
    raw = torch.load(tmp_path / "new.pt", weights_only=True)
    raw["iteration"] = 8
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_checkpoint(tmp_path / "edited.pt")
    torch.save(ckpt, tmp_path / "old.pt")  # written before checksums: loads as before
    assert read_checkpoint(tmp_path / "old.pt")["iteration"] == 7


# ------------------------------------------------------------------------------ results folders: complete


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_test_leaves_no_summary(world, run, monkeypatch, capsys) -> None:
    # The disk fills while the overlays (written after the per-case files before this fix) are written.
    real = fileio.atomic_write

    def full_for_overlays(path, write, **kw):
        return real(path, _enospc if str(path).endswith("overlay_slices.npz") else write, **kw)

    monkeypatch.setattr(fileio, "atomic_write", full_for_overlays)
    monkeypatch.setattr(report, "atomic_write", full_for_overlays)  # the overlays' writer (test streams them)
    one_line_error(capsys, ["test", str(run), *data(world), *TEST], "overlay_slices.npz", "disk full")
    assert not (run / "results" / "test_last" / "summary.json").exists()
    assert RunDir(run).all_results() == []


def test_a_failing_rewrite_keeps_the_earlier_complete_results(world, run, monkeypatch, capsys) -> None:
    assert main(["test", str(run), *data(world), *TEST]) == 0
    folder = run / "results" / "test_last"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    real = os.replace

    def read_only_for_the_log(src, dst):
        if Path(dst).name == "reference_log.txt":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", read_only_for_the_log)
    one_line_error(capsys, ["test", str(run), *data(world), *TEST], "reference_log.txt", "Read-only")
    monkeypatch.setattr(fileio.os, "replace", real)
    for name in ("summary.json", "per_case.json", "per_case.csv", "reference_log.txt"):
        assert (folder / name).read_bytes() == before[name], name
    assert not [p for p in folder.iterdir() if p.name.startswith(".") and "tmp" in p.name]


def test_staged_puts_back_the_earlier_files_when_a_later_rename_fails(tmp_path, monkeypatch) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    real = os.replace
    monkeypatch.setattr(fileio.os, "replace", lambda s, d: _enospc() if Path(d) == b else real(s, d))
    with pytest.raises(OutputError, match="b.txt"), staged(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_ensemble_summary_json_has_its_members(world, run, tmp_path) -> None:
    other = Path(shutil.copytree(world / "run", tmp_path / "other"))
    assert main(["test", str(run), "--ensemble", str(other), *data(world), *TEST]) == 0
    (folder,) = [p for p in (run / "results").iterdir() if "ensemble" in p.name]
    members = json.loads((folder / "summary.json").read_text())["members"]
    assert [Path(m["checkpoint"]).parts[-3] for m in members] == ["run", "other"]
    assert all("mean_dice" in m["reference"] for m in members)


# ------------------------------------------------------------------------------------------ the study


@pytest.fixture(scope="module")
def study(world, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    preset = write_presets(root)
    opts = {"preset": preset, "device": "cpu", "report": False, "progress": False}
    run_study(world / "a" / "syn", ["unet"], root / "out", seeds=[1], sets=parse_sets([]), **opts)
    return root


def test_compare_tests_again_results_of_a_part_of_the_split(world, study, capsys) -> None:
    preset = str(study / "tiny_{model}.yaml")
    out = study / "out"
    (run,) = (out / "runs").iterdir()
    assert main(["test", str(run), "--max-cases", "1", "--checkpoint", "last", *data(world), *TEST]) == 0
    assert _summary(run)["cases"] == 1
    capsys.readouterr()
    argv = ["compare", "--data", str(world / "a" / "syn"), "--models", "unet", "--seeds", "1"]
    assert main([*argv, "--preset", preset, "--out", str(out), "--device", "cpu", "--no-report"]) == 0
    text = capsys.readouterr().out
    assert (
        "again: they cover 1 case(s) only (--max-cases 1)" in text and "reused" not in text.split("train")[-1]
    )
    assert _summary(run)["cases"] == 2


def test_collect_skips_results_of_an_earlier_checkpoint(study, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    shutil.copytree(study / "out" / "runs", out / "runs")
    (run,) = (out / "runs").iterdir()
    # Trained on since it was tested (a resume rewrote last.pt).
    _edit_last(run, lambda c: c.update(iteration=c["iteration"] + 1))
    capsys.readouterr()
    with pytest.raises(Exception, match="none of the 1 run folder"):
        collect(out)
    assert "tested with another last.pt" in capsys.readouterr().out


def test_collect_counts_a_run_named_twice_once(study, tmp_path, capsys) -> None:
    (run,) = (study / "out" / "runs").iterdir()
    twice = [str(run), str(run / ".." / run.name)]
    c = collect(tmp_path / "cmp", twice)
    assert [g["n"] for g in c["groups"]] == [1]
    assert "counted once" in capsys.readouterr().out


def test_collect_out_may_not_be_a_run_folder_being_collected(study, capsys) -> None:
    (run,) = (study / "out" / "runs").iterdir()
    for out in (run, run / "cmp"):
        one_line_error(capsys, ["compare", "--collect", str(run), "--out", str(out)], str(run), "--out")
        assert not (run / "comparison.md").exists() and not (run / "cmp").exists()
