"""Files organseg writes (organseg.fileio): atomic writes, modes from the umask, stale temporaries swept
after a kill, write failures as one line naming the target, and the output-place checks."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from organseg import fileio
from organseg.checkpoint import atomic_torch_save
from organseg.data.io import atomic_write_h5, atomic_write_npz
from organseg.errors import OutputError
from organseg.fileio import (
    atomic_write_bytes,
    atomic_write_text,
    check_output,
    check_output_dir,
    check_output_file,
    staged,
    sweep_stale,
)
from organseg.imageio.volumes import read_image, write_image

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def umask():
    """Run with a chosen umask (and a fresh cached copy of it); the test's own umask is put back after."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_to(value: int) -> None:
        os.umask(value)
        fileio._umask_cache = None

    yield set_to
    os.umask(saved)
    fileio._umask_cache = None


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_every_writer_gives_the_mode_open_would(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "checkpoints" / "last.pt")  # a checkpoint
    atomic_write_npz(
        tmp_path / "train_npz" / "case0001_slice000.npz", image=np.zeros((4, 4)), label=np.zeros((4, 4))
    )  # a dataset slice
    atomic_write_h5(tmp_path / "test_vol_h5" / "case0002.npy.h5", image=np.zeros((2, 4, 4)))
    write_image(np.zeros((2, 4, 4), np.uint8), None, tmp_path / "pred.nii.gz")  # a label map
    atomic_write_text(tmp_path / "report.md", "# report\n")  # a report
    atomic_write_bytes(tmp_path / "report" / "fig.png", b"\x89PNG")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 6
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(expected) for p in files}


def test_rewrite_of_an_old_0600_file_gets_the_umask_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "summary.json"
    target.write_text("{}")
    os.chmod(target, 0o600)  # as organseg wrote it before
    atomic_write_text(target, "{}\n")
    assert _mode(target) == 0o644


def test_stale_temporary_of_a_killed_writer_is_swept_by_the_next_write(tmp_path):
    target = tmp_path / "checkpoints" / "last.pt"
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(SRC)!r})\n"
        "from organseg.fileio import atomic_write\n"
        "def write(tmp):\n"
        "    tmp.write_bytes(b'half a checkpoint')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        f"atomic_write({str(target)!r}, write)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        left = [p for p in target.parent.iterdir() if p.name != target.name]
        # a live writer's temporary is never touched, however old
        os.utime(left[0], (time.time() - 3600, time.time() - 3600))
        assert sweep_stale(target) == []
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert left[0].exists() and left[0].name.startswith(f".last.pt.{proc.pid}.")
    # Just killed: a writer on another machine would still be touching its file, so the grace period holds.
    atomic_torch_save({"w": torch.ones(1)}, tmp_path / "checkpoints" / "other.pt")
    assert left[0].exists()
    old = time.time() - fileio.STALE_GRACE_S - 5
    os.utime(left[0], (old, old))
    atomic_torch_save({"w": torch.ones(1)}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.pt", "other.pt"]


def test_sweep_only_touches_temporaries_of_the_same_target(tmp_path):
    old = time.time() - 3 * fileio.LEGACY_STALE_S
    dead, live = _dead_pid(), os.getpid()
    names = {
        f".a.nii.gz.{dead}.abc123_x.tmp.nii.gz": False,  # dead writer, old: swept
        f".a.nii.gz.{dead}.abc123_y.tmp": False,
        f".a.nii.gz.{live}.abc123_z.tmp": True,  # a live writer (this process)
        f".b.nii.gz.{dead}.abc123_x.tmp": True,  # another target
        ".a.nii.gz.q1w2e3r4.tmp": False,  # left by an earlier organseg (no pid), old
        ".tmp-q1w2e3r4-a.nii.gz": False,
        "a.nii.gz.backup": True,  # not a temporary at all
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (old, old))
    write_image(np.zeros((2, 3, 3), np.uint8), None, tmp_path / "a.nii.gz")
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == {n for n, keep in names.items() if keep} | {"a.nii.gz"}


def test_full_disk_is_one_line_naming_the_target_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", full)
    full_line = r"summary\.json: disk full \(needs ~1 kB, .* free on /.*\): free some space"
    with pytest.raises(OutputError, match=full_line) as exc:
        atomic_write_text(target, "new")
    assert "\n" not in str(exc.value) and ".tmp" not in str(exc.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_full_disk_in_torch_save_and_itk_are_one_line(tmp_path, monkeypatch):
    import builtins

    import SimpleITK as sitk

    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def full_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return Full(fh) if "w" in mode and ".tmp" in str(file) else fh

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(OutputError, match=r"last\.pt: disk full \(.* free on "):
        atomic_torch_save({"w": torch.ones(4)}, tmp_path / "last.pt")
    monkeypatch.setattr(builtins, "open", real_open)

    def itk_full(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK WriteImage:\n...\nCould not write: no space left")

    monkeypatch.setattr(sitk, "WriteImage", itk_full)
    with pytest.raises(OutputError, match=r"img\.nii\.gz: cannot write image \(Could not write: no space"):
        write_image(np.zeros((2, 3, 3), np.uint8), None, tmp_path / "img.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_staged_set_appears_whole_or_not_at_all(tmp_path):
    a, b = tmp_path / "pred.nii.gz", tmp_path / "pred.json"
    with pytest.raises(OutputError, match=r"pred\.nii\.gz: cannot write \(boom\)"), staged(a, b) as (ta, tb):
        ta.write_bytes(b"map")
        raise OSError(errno.EIO, "boom")  # the second file fails
    assert list(tmp_path.iterdir()) == []
    with staged(a, b) as (ta, tb):
        ta.write_bytes(b"map")
        tb.write_text("{}")
    assert a.read_bytes() == b"map" and b.read_text() == "{}"


def test_check_output_refuses_same_inside_and_holding(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"ct")
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    link = tmp_path / "link.nii.gz"
    link.symlink_to(scan)
    hard = tmp_path / "hard.nii.gz"
    os.link(scan, hard)
    for out in (scan, link, hard, tmp_path / "." / "scan.nii.gz"):
        with pytest.raises(OutputError, match="is the same as INPUT"):
            check_output(out, {"INPUT": scan})
    with pytest.raises(OutputError, match="lies inside INPUT"):
        check_output(dicom / "pred.nii.gz", {"INPUT": dicom})
    with pytest.raises(OutputError, match="holds --data"):
        check_output(tmp_path, {"--data": dicom}, folder=True)
    # owned: only what the verb writes in the folder matters
    check_output(tmp_path, {"--data": dicom}, folder=True, owned=("runs", "comparison.md"))
    with pytest.raises(OutputError, match="holds --data"):
        check_output(tmp_path, {"--data": tmp_path / "runs" / "d"}, folder=True, owned=("runs",))
    check_output(tmp_path / "elsewhere.nii.gz", {"INPUT": scan, "CHECKPOINT": None})


def test_unwritable_places_are_named(tmp_path, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match=r"^--out .*file\.txt: is a file; a folder is needed here$"):
        check_output_dir(a_file)
    with pytest.raises(OutputError, match=r"file\.txt is a file, not a folder$"):
        check_output_dir(a_file / "sub" / "run")
    with pytest.raises(OutputError, match=r"file\.txt is a file, not a folder$"):
        check_output_file(a_file / "pred.nii.gz")
    with pytest.raises(OutputError, match=r"^--out .*: is a folder; a file is needed here$"):
        check_output_file(tmp_path)
    # read-only (as root chmod does not stop writes, so the permission check itself is simulated)
    monkeypatch.setattr(fileio.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match=r"cannot write in .* \(permission denied\)"):
        check_output_dir(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_write_into_a_file_path_is_one_line(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match=r"file\.txt.*(file of that name|not a folder)"):
        atomic_write_text(a_file / "sub" / "x.json", "{}")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OutputError, match=r"dir\.json: is a folder; a file is needed here"):
        atomic_write_text(tmp_path / "dir.json", "{}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 555; the os.access mock covers it")
def test_read_only_folder_is_refused_up_front(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=r"cannot write in .*ro \(permission denied\)"):
            check_output_dir(ro / "run")
        with pytest.raises(OutputError, match=r"x\.json: cannot write \(Permission denied\)"):
            atomic_write_text(ro / "x.json", "{}")
    finally:
        ro.chmod(0o755)


def test_check_outputs_against_many_inputs(tmp_path):
    from organseg.errors import OutputError
    from organseg.fileio import check_outputs_against

    scans = tmp_path / "scans"
    scans.mkdir()
    inputs = [scans / f"s{i}.nii.gz" for i in range(50)] + [tmp_path / "series"]
    for p in inputs[:-1]:
        p.write_bytes(b"x")
    (tmp_path / "series").mkdir()
    check_outputs_against({"--out": tmp_path / "out" / "s1.nii.gz"}, inputs)  # nowhere near an input
    with pytest.raises(OutputError, match="s7.json is the same as INPUT"):
        json_input = scans / "s7.json"
        json_input.write_text("{}")
        check_outputs_against({"--out's sidecar": json_input}, [*inputs, json_input])
    with pytest.raises(OutputError, match="lies inside INPUT"):
        check_outputs_against({"viewer": tmp_path / "series" / "a.html"}, inputs)


# ---------------------------------------------------------------- temporaries are never the reason (issue 27)


def test_a_long_final_name_gets_a_bounded_temporary(tmp_path, monkeypatch):
    # A name that fits the file system (255 bytes) must be written, whatever its temporary would have been.
    target = tmp_path / ("a" * 240 + ".nii.gz")
    seen = []
    real = fileio._make_temp

    def spy(final, suffix):
        tmp = real(final, suffix)
        seen.append(tmp.name)
        return tmp

    monkeypatch.setattr(fileio, "_make_temp", spy)
    write_image(np.zeros((2, 3, 3), np.uint8), None, target)
    assert target.is_file() and [p.name for p in tmp_path.iterdir()] == [target.name]
    assert len(seen[0].encode()) < 160 and seen[0].endswith(".tmp.nii.gz")
    # two long names with the same head get different temporaries (the hash of the whole name)
    assert fileio._temp_stem("b" * 200 + "1") != fileio._temp_stem("b" * 200 + "2")
    assert fileio._temp_stem("short.json") == "short.json"


def test_a_stale_temporary_of_a_long_name_is_swept(tmp_path):
    target = tmp_path / ("c" * 230 + ".json")
    stale = tmp_path / f".{fileio._temp_stem(target.name)}.{_dead_pid()}.abc123_x.tmp"
    stale.write_bytes(b"half")
    old = time.time() - fileio.STALE_GRACE_S - 5
    os.utime(stale, (old, old))
    atomic_write_text(target, "{}")
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_an_upper_case_nifti_name_is_written(tmp_path):
    # ITK's NIfTI writer takes only a lower-case .nii.gz: the temporary carries that, the final name is kept.
    target = tmp_path / "SEG.NII.GZ"
    write_image(np.ones((2, 3, 3), np.uint8), None, target)
    assert [p.name for p in tmp_path.iterdir()] == ["SEG.NII.GZ"]
    assert read_image(target)[0].sum() == 18
    assert fileio.keep_suffix("SEG.NII.GZ") == ".nii.gz" and fileio.keep_suffix("x." + "y" * 40) == ""


def test_a_symlink_loop_in_an_output_path_is_one_line(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(OutputError, match=r"loop/seg\.nii\.gz: the path runs through a loop of symbolic"):
        check_output(tmp_path / "loop" / "seg.nii.gz", {"INPUT": tmp_path / "scan.nii.gz"})


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, ["disk full (needs ~", " free on /"]),
        (errno.EDQUOT, ["disk quota exceeded (needs ~", "your quota is full"]),
        (errno.EFBIG, ["file too large (needs ~"]),
    ],
)
def test_no_room_is_one_line_with_the_space_needed(tmp_path, monkeypatch, code, words):
    target = tmp_path / "last.pt"
    atomic_write_bytes(target, b"x" * 5000)

    def write(tmp):
        tmp.write_bytes(b"y" * 100)
        raise OSError(code, os.strerror(code))

    with pytest.raises(OutputError) as exc:
        fileio.atomic_write(target, write)
    message = str(exc.value)
    assert message.startswith(f"{target}: ") and "\n" not in message and ".tmp" not in message
    assert all(w in message for w in words), message
    assert "needs ~5 kB" in message  # as much as the file it replaces
    assert target.read_bytes() == b"x" * 5000 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_write_that_fills_the_disk_part_way_names_the_space_it_needs(tmp_path):
    """As a real disk does: the part that fits is written, then ENOSPC (tests/small_disk.py); torch.save's
    writer swallows that error and fails with its own, which the message must not show."""
    from small_disk import small_disk

    with small_disk(tmp_path, 50_000):
        with pytest.raises(OutputError, match=r"w\.pt: disk full \(needs ~0\.4 MB, \d+ kB free on /"):
            atomic_torch_save({"w": torch.zeros(100_000)}, tmp_path / "w.pt")
        with pytest.raises(OutputError, match=r"b\.bin: disk full \(needs ~0\.2 MB, \d+ kB free on /"):
            atomic_write_bytes(tmp_path / "b.bin", b"z" * 200_000)
    assert list(tmp_path.iterdir()) == []
