"""One writer per folder (issue 27): the lock itself, and every verb that writes a run, study, results or
prediction folder meeting a folder another process holds, as real processes.

The second writer is never raced against the first: a helper process takes the folder's lock through
:func:`organseg.locks.folder_lock` and holds it until the test closes its stdin, so the outcome is certain."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from badinput.inputs import TRAIN_SETS
from organseg.cli.main import main
from organseg.data.completion import own_entries
from organseg.data.phantom import write_phantom_set
from organseg.data.prepare import prepare_synapse
from organseg.errors import DataError
from organseg.locks import LOCK_FILE, FolderBusy, folder_lock, holds, read_holder
from organseg.training import train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}

# The helper: take FOLDER's lock as VERB, say so, then hold it until stdin closes. With "children" it first
# starts a program (close_fds=False, so only O_CLOEXEC keeps the lock from it) and forks a child, and prints
# their pids: both outlive the helper when the test kills it.
HOLD = """
import os, subprocess, sys, time
from organseg.locks import folder_lock
with folder_lock(sys.argv[1], sys.argv[2]):
    if sys.argv[3:] == ["children"]:
        prog = subprocess.Popen(["sleep", "60"], close_fds=False)
        ready_r, ready_w = os.pipe()
        forked = os.fork()
        if forked == 0:  # fork() returns here after the at-fork handler closed the child's copy of the lock
            os.write(ready_w, b"1")
            time.sleep(60)
            os._exit(0)
        os.read(ready_r, 1)  # without this wait, the test could kill us before the child has run at all
        print("children", prog.pid, forked, flush=True)
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held_by_another_process(folder: Path, what: str = "train", *extra: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), what, *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        lines = []
        while not lines or lines[-1] != "held":
            line = proc.stdout.readline()
            assert line, f"the helper ended before holding {folder}"
            lines.append(line.strip())
        proc.lines = lines
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
        proc.wait(timeout=30)


def _one_error_line(stderr: str, verb: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"organseg {verb}: error: "), stderr
    return lines[0]


def _names_the_holder(message: str, pid: int) -> None:
    assert f"pid {pid} on {socket.gethostname()} since " in message, message
    assert "UTC" in message and "in use by another organseg process" in message, message


# ----------------------------------------------------------------------------------------------- the lock


def test_lock_records_its_holder_and_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "new" / "run"
    with folder_lock(folder, "train") as lock:
        assert lock.created and holds(folder)
        holder = read_holder(folder)
        assert holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname()
        assert holder.what == "train" and abs(holder.since - time.time()) < 60 and holder.command
        # hidden, and not "content" for the output checks of a later writer
        assert own_entries(folder) == []
    assert not (tmp_path / "new").exists()  # created by the lock, still empty: removed with the lock file
    with folder_lock(folder, "train"):
        (folder / "config.yaml").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"] and not holds(folder)


def test_a_second_writer_meets_one_line_naming_the_holder(tmp_path):
    folder = tmp_path / "run"
    with held_by_another_process(folder, "compare") as proc:
        before = sorted(p.name for p in folder.iterdir())
        with pytest.raises(FolderBusy) as err, folder_lock(folder, "train"):
            pass
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{folder}: in use")
        _names_the_holder(message, proc.pid)
        assert f"-c {folder} compare" in message  # the holder's command line
        assert sorted(p.name for p in folder.iterdir()) == before == [LOCK_FILE]
    # released: free again, without a word about a dead holder
    with folder_lock(folder, "train") as lock:
        assert lock.holder.pid == os.getpid()


def test_a_dead_holder_is_taken_over_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "run"
    with held_by_another_process(folder) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (folder / LOCK_FILE).is_file()  # a killed holder cannot remove its file; the kernel freed the lock
    with folder_lock(folder, "train"):
        err = capsys.readouterr().err
        assert err.startswith(f"organseg train: warning: {folder}: taking over the lock of pid {proc.pid} ")
        assert "which is no longer running" in err and len(err.strip().splitlines()) == 1
        assert read_holder(folder).pid == os.getpid()


def test_the_lock_is_not_inherited_by_child_processes(tmp_path):
    """A program the holder started and a child it forked both outlive it; neither keeps the folder."""
    folder = tmp_path / "run"
    with held_by_another_process(folder, "train", "children") as proc:
        prog, forked = (int(x) for x in proc.lines[0].split()[1:])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    try:
        for pid in (prog, forked):
            os.kill(pid, 0)  # still running
        with folder_lock(folder, "train"):
            assert holds(folder)
    finally:
        for pid in (prog, forked):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_holding_thread_may_enter_again_another_thread_may_not(tmp_path):
    folder = tmp_path / "study"
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with folder_lock(folder, "train"):
                pass
        except FolderBusy as exc:
            errors.append(exc)

    with folder_lock(folder, "compare"):
        with folder_lock(folder / ".." / "study", "train") as inner:  # same folder, another spelling
            assert not inner.created
        assert (folder / LOCK_FILE).is_file()  # the inner exit did not release it
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and "another thread of this process" in str(errors[0])
    assert not folder.exists()


# ------------------------------------------------------------------------------- the writers, as processes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A prepared phantom dataset, one scan, and a run trained on it for one iteration."""
    root = tmp_path_factory.mktemp("locks")
    write_phantom_set(root / "raw", 3, 64, 0, num_slices=4, progress=False)
    prepare_synapse(root / "raw", root / "syn", train_cases=[1, 2], test_cases=[3], progress=False)
    shutil.copy(root / "raw" / "img" / "img0003.nii.gz", root / "scan.nii.gz")
    rc = main(["train", "unet_synapse", "--data", str(root / "syn"), "--out", str(root / "run"), *TRAIN_SETS])
    assert rc == 0
    return {"root": root, "syn": root / "syn", "run": root / "run", "scan": root / "scan.nii.gz"}


def test_library_train_on_a_held_folder_fails_before_touching_it(tiny, tmp_path):
    out = tmp_path / "run"
    with held_by_another_process(out) as proc:
        with pytest.raises(FolderBusy, match=f"pid {proc.pid} on "):
            train("unet_synapse", tiny["syn"], out)
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]


def test_a_fresh_run_that_fails_leaves_no_folder_and_no_lock(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DataError):  # found after the lock is taken: the dataset is opened inside it
        train("unet_synapse", tmp_path / "no-such-data", out)
    assert not out.exists()


def _writers(t: dict[str, Path], scratch: Path) -> dict[str, tuple[list[str], Path]]:
    """verb case -> (organseg argv, the folder it writes)."""
    syn, run = str(t["syn"]), t["run"]
    compare = ["compare", "--data", syn, "--models", "unet", "--out", str(scratch / "study"), "--no-report"]
    compare += [
        x
        for s in ("model.args.width=0.0625", "train.img_size=32", "train.max_iterations=1")
        for x in ("--set", s)
    ]
    return {
        "train_new": (
            ["train", "unet_synapse", "--data", syn, "--out", str(scratch / "new"), *TRAIN_SETS],
            scratch / "new",
        ),
        "train_resume": (
            ["train", "unet_synapse", "--data", syn, "--out", str(run), "--resume", *TRAIN_SETS],
            run,
        ),
        "compare": (compare, scratch / "study"),
        "test": (
            ["test", str(run), "--data", syn, "--checkpoint", "last", "--no-report", "--device", "cpu"],
            run / "results" / "test_last",
        ),
        "predict": (
            [
                "predict",
                str(run / "checkpoints" / "last.pt"),
                str(t["scan"]),
                "--out",
                str(scratch / "pred"),
                "--device",
                "cpu",
            ],
            scratch / "pred",
        ),
    }


@pytest.mark.parametrize("case", ["train_new", "train_resume", "compare", "test", "predict"])
def test_a_verb_into_a_folder_being_written_exits_2_with_one_line(tiny, tmp_path, case):
    argv, folder = _writers(tiny, tmp_path)[case]
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None
    with held_by_another_process(folder, "train") as proc:
        p = subprocess.run(
            [sys.executable, "-m", "organseg", *argv], capture_output=True, text=True, env=ENV, timeout=120
        )
        assert p.returncode == 2, p.stderr
        message = _one_error_line(p.stderr, argv[0])
        _names_the_holder(message, proc.pid)
        assert str(folder) in message
        after = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
        assert after == sorted([*(before or []), LOCK_FILE]), "the second writer wrote something"
