"""Stopping a command by a signal (organseg.stopping): SIGTERM, SIGHUP and SIGINT end any verb through its
clean-ups with one line and exit 128 + the signal. The study's children: tests/test_compare.py."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

import organseg.cli.phantom
from organseg.cli.main import main
from organseg.fileio import atomic_write
from organseg.stopping import StopSignal, stop_on_signals

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
