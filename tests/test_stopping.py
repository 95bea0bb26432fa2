"""Stopping a command by a signal (organseg.stopping): SIGTERM, SIGHUP and SIGINT end any verb through its
clean-ups with one line and exit 128 + the signal. The study's children: tests/test_compare.py."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

import organseg.cli.phantom
from organseg.cli.main import main
from organseg.fileio import atomic_write
from organseg.stopping import PARENT_ENV, StopSignal, stop_on_signals, stop_with_parent
from organseg.study import runner

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")


def test_a_signal_becomes_stop_signal_and_the_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    with pytest.raises(StopSignal) as stop, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at once
    assert stop.value.signum == signal.SIGTERM and stop.value.exit_code == 143
    assert str(stop.value) == "stopped by SIGTERM"
    stop.value.runs = 2
    assert str(stop.value) == "stopped by SIGTERM: 2 run(s) stopped, re-run the same command to resume"
    assert {s: signal.getsignal(s) for s in before} == before


def test_an_ignored_signal_stays_ignored():
    saved = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, saved)


def _wait_for_term(ready) -> None:
    ready.set()
    time.sleep(30)


def test_a_forked_child_ends_as_it_would_without_the_handler():
    """A DataLoader worker forked inside the command inherits the handler; SIGTERM still ends it at once."""
    ctx = multiprocessing.get_context("fork")
    with stop_on_signals():
        ready = ctx.Event()
        child = ctx.Process(target=_wait_for_term, args=(ready,))
        child.start()
        assert ready.wait(30)
        os.kill(child.pid, signal.SIGTERM)
        child.join(30)
    assert child.exitcode == -signal.SIGTERM


def test_a_verb_stopped_in_a_write_says_so_and_leaves_no_temporary(tmp_path, monkeypatch, capsys):
    target = tmp_path / "out" / "file.bin"

    def run(args) -> int:
        def write(tmp):
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)  # kill, scancel, a container stopping
            time.sleep(5)

        atomic_write(target, write)
        return 0

    monkeypatch.setattr(organseg.cli.phantom, "run", run)
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--cases", "1"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["organseg phantom: stopped by SIGTERM"]
    assert list(target.parent.iterdir()) == []  # the temporary went with the stop


# A study killed outright (SIGKILL, the out-of-memory killer) runs no clean-up: its runs stop themselves.
# The script below is the grandparent: it becomes the subreaper of its descendants (Linux), so that the run,
# orphaned when its parent (the "study") is killed, is re-parented to it and its exit status can be read.
_ORPHAN_SCRIPT = r"""
import ctypes, json, os, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
out, started = sys.argv[1], sys.argv[2]
study = subprocess.Popen([sys.executable, "-c", '''
import os, signal, subprocess, sys, time
from organseg.stopping import PARENT_ENV
env = {**os.environ, PARENT_ENV: str(os.getpid())}
run = subprocess.Popen([sys.executable, "-m", "organseg", "phantom", "--out", sys.argv[1], "--cases", "200",
                        "--size", "128", "--quiet"], env=env)
print(run.pid, flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
os.kill(os.getpid(), signal.SIGKILL)
''', out, started], stdout=subprocess.PIPE, text=True)
run_pid = int(study.stdout.readline())
while not (os.path.isdir(out) and any(n.endswith(".nii.gz") for _, _, f in os.walk(out) for n in f)):
    time.sleep(0.05)  # the run is past its start-up and writing cases
open(started, "w").close()
study.wait()
t0 = time.monotonic()
pid, status = os.waitpid(run_pid, 0)  # the orphaned run is now this process's child
print(json.dumps({"study": study.returncode, "run": os.waitstatus_to_exitcode(status),
                  "seconds": time.monotonic() - t0}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux (PR_SET_CHILD_SUBREAPER)")
def test_a_run_stops_itself_when_its_study_is_killed_outright(tmp_path):
    out = tmp_path / "ph"
    proc = subprocess.run(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(out), str(tmp_path / "started")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["study"] == -signal.SIGKILL
    assert result["run"] == 128 + signal.SIGTERM  # stopped as by SIGTERM, with its clean-ups
    assert result["seconds"] < 60
    assert "stopped by SIGTERM" in proc.stderr
    written = [p.name for p in out.rglob("*")]
    assert not [n for n in written if n.startswith(".") and ".tmp" in n]  # nothing half-written


def test_the_parent_named_is_read_once_and_not_passed_on(monkeypatch):
    monkeypatch.setenv(PARENT_ENV, str(os.getppid()))
    thread = stop_with_parent(poll_s=0.01)
    assert thread is not None and thread.daemon and thread.is_alive()
    assert PARENT_ENV not in os.environ  # this process's own children must not watch a grandparent
    assert stop_with_parent() is None  # nothing named now


@pytest.mark.parametrize("value", ["", "abc", "-1", "12.5"])
def test_a_parent_value_that_is_no_process_id_is_ignored(monkeypatch, value):
    monkeypatch.setenv(PARENT_ENV, value)
    assert stop_with_parent() is None
    assert PARENT_ENV not in os.environ


def test_a_study_names_itself_as_its_runs_parent(tmp_path):
    pool = runner._ProcessPool([], tmp_path, 1, 0, {}, [], False)
    assert pool.env[PARENT_ENV] == str(os.getpid())
