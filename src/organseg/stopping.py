"""A command stopped by a signal ends like an interrupted one: every clean-up on the way out runs.

Python's default for SIGTERM (``kill``, ``scancel``, a container stopping) and SIGHUP (a closed terminal or
SSH session) ends the process at once: no ``finally`` runs, so a ``compare --jobs 2`` dies while its child
trainings go on, and a writer's temporary file and lock stay behind. Inside :func:`stop_on_signals` (the
command line wraps every verb in it) SIGTERM, SIGHUP and SIGINT raise :class:`StopSignal` in the main thread
instead, a ``BaseException`` like ``KeyboardInterrupt``, so no ``except Exception`` swallows it: the study's
process pool terminates its children, a SLURM study cancels its jobs, atomic writes remove their temporaries,
locks are released. The command line then prints one line and exits with 128 + the signal's number (143 for
SIGTERM), as a shell reports a process a signal ended. A second signal while the first is being handled is
ignored, so the clean-up (bounded: :data:`STOP_WAIT_S`) is not cut short.

A parent killed outright (SIGKILL, the kernel's out-of-memory killer) runs no clean-up at all. The processes
a study starts therefore watch it themselves (:func:`stop_with_parent`): when it is gone they stop as if sent
SIGTERM, instead of training on for hours, unseen, holding the run folder's lock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name)
)
#: seconds a stopped command waits for its child processes to end after SIGTERM before it kills them
STOP_WAIT_S = 10.0
#: the environment variable through which a parent asks its organseg child to stop when it dies
PARENT_ENV = "ORGANSEG_PARENT_PID"
#: seconds between two looks at whether the parent still lives
PARENT_POLL_S = 1.0


class StopSignal(BaseException):  # noqa: N818 (a stop, like KeyboardInterrupt, not an error)
    """A stop signal arrived (see the module docstring); ``runs``: how many runs it stopped, where known."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.runs: int | None = None

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        if self.runs is None:
            return f"stopped by {self.name}"
        return (
            f"stopped by {self.name}: {self.runs} run(s) stopped, re-run the same command to resume"
            if self.runs
            else f"stopped by {self.name}: no run was in progress, re-run the same command to go on"
        )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM, SIGHUP and SIGINT into :class:`StopSignal` while the body runs (main thread only:
    elsewhere Python cannot install handlers, and the body runs unchanged); the previous handlers come back
    after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False
    owner = os.getpid()

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if os.getpid() != owner:
            # A forked child (a DataLoader worker) inherited the handler: it ends as it would have without it
            # (torch's workers expect KeyboardInterrupt on Ctrl-C; SIGTERM ends them at once).
            handler = previous.get(signum, signal.SIG_DFL)
            signal.signal(signum, handler)
            if callable(handler):
                handler(signum, frame)
            else:
                os.kill(os.getpid(), signum)
            return
        if stopping:
            return  # the clean-up of the first one is running
        stopping = True
        raise StopSignal(signum)

    previous: dict[int, object] = {}
    for signum in STOP_SIGNALS:
        # A signal the process was told to ignore (nohup: SIGHUP; a background job: SIGINT) stays ignored,
        # and a handler of the program that embeds organseg stays in place.
        if signal.getsignal(signum) not in (signal.SIG_DFL, signal.default_int_handler):
            continue
        with contextlib.suppress(OSError, ValueError):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def stop_with_parent(poll_s: float = PARENT_POLL_S) -> threading.Thread | None:
    """If :data:`PARENT_ENV` names this process's parent, watch it from a daemon thread and send this process
    SIGTERM once it is gone (this process is then re-parented, so ``os.getppid()`` changes; a parent killed
    while this process was starting is gone already, and it stops at once). Inside
    :func:`stop_on_signals` that ends the command with its clean-ups, as a stop of the parent itself would.

    The variable is removed from the environment as it is read, so that this process's own children do not
    take their parent for the one named. Returns the watching thread, or None when no parent was named (or
    the value is not a process id). Polling, not Linux's ``PR_SET_PDEATHSIG``: one mechanism everywhere, and
    a second of delay is nothing beside a training run."""
    value = os.environ.pop(PARENT_ENV, None)
    if value is None or not value.strip().isdigit():
        return None
    parent = int(value)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="organseg-parent-watch", daemon=True)
    thread.start()
    return thread
