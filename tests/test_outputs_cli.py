"""Every verb that writes: never over or into its inputs, one line (exit 2) for an output place it cannot
write, nothing half-written, and plain progress lines when stderr is not a terminal."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import make_run, one_line_error, write_tiny_raw
from organseg.cli.main import main
from organseg.data.classes import SYNAPSE_CLASSES
from organseg.data.prepare import prepare_synapse
from organseg.data.preprocess import ct_window_spec
from organseg.imageio.volumes import Geometry, write_image
from organseg.progress import PlainProgress, progress_bar
from small_disk import small_disk

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "organseg" / "configs"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny scan, a DICOM-like folder, a prepared Synapse dataset and a run whose checkpoint fits it."""
    root = tmp_path_factory.mktemp("outputs")
    scan = root / "scan.nii.gz"
    hu = np.random.default_rng(0).normal(40, 50, (3, 32, 32)).astype(np.int16)
    write_image(hu, Geometry(spacing=(2.0, 1.0, 1.0)), scan)
    dicom = root / "dicom"
    dicom.mkdir()
    (dicom / "IM0001.dcm").write_bytes(b"not read: the output check comes first")
    raw = root / "raw"
    write_tiny_raw(raw, [1, 2])
    data = root / "data"
    prepare_synapse(raw, data, train_cases=[1], test_cases=[2], progress=False)
    run = make_run(root / "run", list(SYNAPSE_CLASSES), ct_window_spec(), data_root=str(data))
    a_file = root / "a_file.txt"
    a_file.write_text("a file, not a folder")
    return {
        "root": root,
        "scan": scan,
        "dicom": dicom,
        "raw": raw,
        "data": data,
        "run": run,
        "ckpt": run / "checkpoints" / "best.pt",
        "file": a_file,
    }


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- output over input


def test_predict_never_writes_over_or_into_its_inputs(world, tmp_path, capsys):
    ck, scan = world["ckpt"], world["scan"]
    before = scan.read_bytes()
    one_line_error(capsys, ["predict", ck, scan, "--out", scan], "is the same as INPUT", scan)
    assert scan.read_bytes() == before  # the motivating bug: the CT was replaced by its label map
    link = tmp_path / "alias.nii.gz"
    link.symlink_to(scan)
    one_line_error(capsys, ["predict", ck, scan, "--out", link], "is the same as INPUT")
    one_line_error(
        capsys, ["predict", ck, world["dicom"], "--out", world["dicom"] / "pred.nii.gz"], "lies inside INPUT"
    )
    one_line_error(
        capsys,
        ["predict", ck, scan, "--out", tmp_path / "p.nii.gz", "--overlay", scan],
        "--overlay",
        "is the same as INPUT",
    )
    one_line_error(
        capsys,
        ["predict", ck, scan, "--out", tmp_path / "p.nii.gz", "--overlay", ck],
        "is the same as CHECKPOINT",
    )
    one_line_error(
        capsys,
        ["predict", ck, scan, "--out", tmp_path / "p.nii.gz", "--overlay", tmp_path / "p.json"],
        "are the same file",
    )
    assert scan.read_bytes() == before and list(tmp_path.iterdir()) == [link]


def test_test_never_writes_into_the_data_or_over_the_checkpoint(world, tmp_path, capsys):
    data, run, ck = world["data"], world["run"], world["ckpt"]
    before = _listing(data)
    one_line_error(capsys, ["test", run, "--data", data, "--out", data], "is the same as --data")
    one_line_error(capsys, ["test", run, "--data", data, "--out", data / "results"], "lies inside --data")
    one_line_error(capsys, ["test", ck, "--data", data, "--out", run], "holds CHECKPOINT")
    assert _listing(data) == before and not (run / "per_case.csv").exists()


def test_train_never_writes_into_the_data_or_over_its_config(world, tmp_path, capsys):
    data = world["data"]
    one_line_error(capsys, ["train", "unet_synapse", "--data", data, "--out", data], "is the same as --data")
    one_line_error(
        capsys, ["train", "unet_synapse", "--data", data, "--out", data / "run"], "lies inside --data"
    )
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(CONFIGS / "unet_synapse.yaml", run / "config.yaml")
    one_line_error(
        capsys, ["train", run / "config.yaml", "--data", data, "--out", run], "holds PRESET_OR_YAML"
    )
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_prepare_never_writes_into_the_raw_folder(world, tmp_path, capsys):
    raw = world["raw"]
    before = _listing(raw)
    one_line_error(capsys, ["prepare", "synapse", "--raw", raw, "--out", raw], "is the same as --raw")
    one_line_error(capsys, ["prepare", "synapse", "--raw", raw, "--out", raw / "syn"], "lies inside --raw")
    outer = tmp_path / "outer"
    shutil.copytree(raw, outer / "raw")
    one_line_error(capsys, ["prepare", "synapse", "--raw", outer / "raw", "--out", outer], "holds --raw")
    assert _listing(raw) == before and sorted(p.name for p in outer.iterdir()) == ["raw"]


def test_compare_never_writes_into_the_data(world, capsys):
    data = world["data"]
    before = _listing(data)
    args = ["compare", "--data", data, "--models", "unet"]
    one_line_error(capsys, [*args, "--out", data], "is the same as --data")
    one_line_error(capsys, [*args, "--out", data / "study"], "lies inside --data")
    assert _listing(data) == before


# ------------------------------------------------------------------------------- unwritable output places


def test_every_verb_names_an_output_place_it_cannot_write(world, tmp_path, capsys):
    """A file where a folder must be, and a folder under a file: real for root too (chmod is not)."""
    f, data, run, ck, scan = world["file"], world["data"], world["run"], world["ckpt"], world["scan"]
    under = f / "sub"
    cases = {
        "phantom": ["phantom", "--cases", "1", "--size", "32", "--slices", "4", "--quiet", "--out"],
        "prepare": ["prepare", "synapse", "--raw", world["raw"], "--quiet", "--out"],
        "train": ["train", "unet_synapse", "--data", data, "--out"],
        "test": ["test", run, "--data", data, "--out"],
        "predict": ["predict", ck, scan, "--out"],
        "compare": ["compare", "--data", data, "--models", "unet", "--out"],
        "demo": ["demo", "--fast", "--out"],
    }
    for verb, argv in cases.items():
        if verb != "predict":
            one_line_error(capsys, [*argv, f], "is a file; a folder is needed here", f)
        target = under / "pred.nii.gz" if verb == "predict" else under
        one_line_error(capsys, [*argv, target], f"{f} is a file, not a folder")
    folder = tmp_path / "folder.nii.gz"
    folder.mkdir()
    one_line_error(capsys, ["predict", ck, scan, "--out", folder], "is a folder; a file is needed here")
    one_line_error(
        capsys,
        ["predict", ck, scan, "--out", tmp_path / "p.nii.gz", "--overlay", under / "o.png"],
        "--overlay",
        "is a file, not a folder",
    )
    one_line_error(capsys, ["compare", "--collect", "--out", f], "is a file; a folder is needed here")
    assert f.read_text() == "a file, not a folder"


def test_report_names_a_report_place_it_cannot_write(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    (run / "report.md").mkdir()
    one_line_error(capsys, ["report", run], "report.md: is a folder; a file is needed here")
    (run / "report.md").rmdir()
    (run / "report").write_text("x")
    one_line_error(capsys, ["report", run], "report: is a file; a folder is needed here")


def test_predict_full_disk_leaves_no_label_map_without_its_sidecar(world, tmp_path, capsys, monkeypatch):
    ck, scan = world["ckpt"], world["scan"]
    out = tmp_path / "pred.nii.gz"
    out.write_bytes(b"an earlier label map")
    out.with_name("pred.json").write_text("its volumes")
    before = _listing(tmp_path)
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".") and ".json." in self.name:  # the sidecar's temporary
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    one_line_error(
        capsys,
        ["predict", ck, scan, "--out", out, "--overwrite", "--device", "cpu"],
        "pred.nii.gz: disk full (",
    )
    assert _listing(tmp_path) == before  # the earlier pair untouched, no temporaries
    new = tmp_path / "new.nii.gz"
    one_line_error(capsys, ["predict", ck, scan, "--out", new, "--device", "cpu"], "disk full")
    assert _listing(tmp_path) == before  # no new.nii.gz without new.json


def test_unexpected_oserror_is_one_line_with_the_path(monkeypatch, capsys):
    import organseg.cli.report as report

    def boom(args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/runs/x/report.md")

    monkeypatch.setattr(report, "run", boom)
    err = one_line_error(capsys, ["report", "/runs/x"])
    assert err == "organseg report: error: /runs/x/report.md: Permission denied"


# ----------------------------------------------------------------------------------------------- progress


def test_plain_progress_writes_bounded_whole_lines():
    clock = iter(np.arange(0.0, 1e6, 0.1)).__next__  # 0.1 s per step
    out = io.StringIO()
    bar = PlainProgress(range(1000), desc="test cases", unit="case", file=out, interval=10.0, clock=clock)
    for _ in bar:
        bar.set_postfix(dice="0.812")
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and 5 <= len(lines) <= 12  # about 100 s of work, a line per 10 s and a last one
    assert lines[-1].startswith("test cases: 1000/1000 case (100%)") and "dice=0.812" in lines[-1]
    assert "ETA" in lines[0] and "case/s" in lines[0]


def test_progress_bar_picks_plain_lines_off_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress_bar(range(3), file=io.StringIO()), PlainProgress)
    assert not isinstance(progress_bar(range(3), file=Tty()), PlainProgress)
    assert list(progress_bar(range(3), file=io.StringIO(), disable=True)) == [0, 1, 2]


def test_an_error_inside_a_loop_ends_its_bar_before_the_message(world, tmp_path, monkeypatch):
    """On a terminal, a loop that fails (here: the disk fills at the first case's viewer page) leaves no
    half-drawn bar in front of the error: the bar is erased and the message starts its own line."""

    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    res = tmp_path / "res"
    argv = ["test", str(world["run"]), "--data", str(world["data"]), "--out", str(res), "--no-report"]
    with small_disk(tmp_path, 2_000):
        assert main([*argv, "--device", "cpu"]) == 2
    # What a terminal shows: each line as its last carriage return leaves it.
    screen = [line.rsplit("\r", 1)[-1] for line in err.getvalue().split("\n")]
    shown = [line for line in screen if line.strip()]
    assert len(shown) == 1 and shown[0].startswith("organseg test: error: "), screen  # no bar left over
    assert "viewer" in shown[0] and "disk full" in shown[0]


def test_verbs_print_no_carriage_returns_into_a_log(world, tmp_path, capsys):
    argv = ["phantom", "--out", tmp_path / "ph", "--cases", "2", "--size", "32", "--slices", "4"]
    assert main([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "phantom: 2/2 case (100%)" in err
    out = tmp_path / "res"
    argv = ["test", world["run"], "--data", world["data"], "--out", out, "--device", "cpu", "--no-report"]
    assert main([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "test cases: 1/1 case (100%)" in err
