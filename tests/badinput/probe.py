"""Run the bad-input table and judge each case:
``python tests/badinput/probe.py [--write-docs] [--only ID...] [--known]``.

A case is CLEAN when ``organseg ARGV`` exits 2 with one error line ``organseg VERB: error: ...`` that
holds the expected substrings, shows no traceback, changes no input file and leaves no new file (temporaries
included).
TRACEBACK: an exception escaped ``main``, or the message is missing, multi-line or lacks what it must name.
BAD: the fault was accepted (exit 0), an input changed, output was left behind, the process was killed
(signal) or it ran past its time limit. BAD is judged before TRACEBACK: a traceback that also left a half
output is BAD.

Time limits measure the work a case does, not the machine's load. A case may use ``Case.cpu_limit_s`` CPU
seconds (60 by default; user + system time of all its threads): a fault that was accepted and went on to
train or compile reaches it, while a busy machine, which stretches wall-clock time several-fold, barely
changes it. In-process cases count this process's CPU time with an ``ITIMER_PROF`` timer; subprocess cases
run under ``RLIMIT_CPU`` (the kernel stops the child with SIGXCPU). Child processes that an in-process case
starts (``compare`` runs) have their own clocks and are bounded by the backstop only. A wall-clock backstop
of :data:`WALL_LIMIT_S` (10 min) catches what uses no CPU, a wait that never ends: only a real hang reaches
it. ``Outcome`` records both the wall-clock and the CPU seconds of each case."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import locale
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

if __name__ == "__main__":  # run alone: import this worktree's organseg and the badinput package
    _root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(_root / "src"), str(_root / "tests")]

from badinput.cases import CASES, GROUPS, Case, by_id
from badinput.inputs import DICOM, ROOT, Base, Ctx, build_base
from small_disk import small_disk

CLEAN, TRACEBACK, BAD, SKIP, ERROR = "CLEAN", "TRACEBACK", "BAD", "SKIP", "ERROR"
DOC = ROOT / "docs" / "bad_input.md"
WALL_LIMIT_S = 600.0  # the backstop for a case that hangs without using CPU (see the module docstring)


@dataclass
class Outcome:
    verdict: str
    reason: str  # why it is not CLEAN ("" when it is)
    message: str  # the error line (or the last stderr line), folder names shortened
    rc: int | None
    seconds: float  # wall clock
    cpu_seconds: float = 0.0  # user + system, this process's threads and the children it waited for


class _TimeUp(BaseException):
    """Raised by SIGPROF (CPU limit) or SIGALRM (wall-clock backstop) inside an in-process case that ran past
    its limit (BaseException: no handler in organseg may swallow it); the argument names the limit."""


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of the children it has waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _cpu_limit_text(cpu_limit_s: float) -> str:
    return f"{cpu_limit_s:g} s of CPU time"


def _wall_limit_text() -> str:
    return f"the {WALL_LIMIT_S:g} s wall-clock backstop"


def _run_inprocess(
    argv: list[str], cpu_limit_s: float, disk: contextlib.AbstractContextManager | None = None
) -> tuple[int | None, str, BaseException | None, str]:
    """Run ``organseg *argv`` here (inside ``disk``, a simulated small disk, if given); returns (exit code,
    stderr, escaped exception, the limit it ran past or "")."""
    import torch

    from organseg.cli.main import main

    err, out = io.StringIO(), io.StringIO()
    # A case may change process-wide settings (train.threads, train.deterministic); later cases must not care.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rc, exc, timed_out = None, None, ""
    saved_locale = locale.setlocale(locale.LC_ALL)
    cpu_limit, wall_limit = _cpu_limit_text(cpu_limit_s), _wall_limit_text()

    def on_cpu_limit(signum, frame):
        raise _TimeUp(cpu_limit)

    def on_wall_limit(signum, frame):
        raise _TimeUp(wall_limit)

    old_prof = signal.signal(signal.SIGPROF, on_cpu_limit)
    old_alrm = signal.signal(signal.SIGALRM, on_wall_limit)
    # ITIMER_PROF counts this process's CPU time (every thread's, user and system) from now on.
    signal.setitimer(signal.ITIMER_PROF, cpu_limit_s)
    signal.setitimer(signal.ITIMER_REAL, WALL_LIMIT_S)
    try:
        disk = disk or contextlib.nullcontext()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), disk:
            rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    except _TimeUp as e:
        timed_out = str(e)
    except BaseException as e:  # noqa: BLE001 - that is what the probe looks for
        exc = e
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGPROF, old_prof)
        signal.signal(signal.SIGALRM, old_alrm)
        locale.setlocale(locale.LC_ALL, saved_locale)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return rc, err.getvalue(), exc, timed_out


def _run_subprocess(
    cmd: list[str], cwd: Path, cpu_limit_s: float, mem_gb: float | None
) -> tuple[int | None, str, str]:
    """Run ``cmd`` (``python -m organseg ...``) in ``cwd``; returns (exit code, stderr, the limit it ran past
    or "")."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    soft = max(1, math.ceil(cpu_limit_s))

    def limit():
        # The kernel sends SIGXCPU at the soft limit and SIGKILL at the hard one (should SIGXCPU be caught).
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))
        if mem_gb:
            size = int(mem_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        p = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=WALL_LIMIT_S,
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, stderr, _wall_limit_text()
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = now.ru_utime + now.ru_stime - kids.ru_utime - kids.ru_stime  # the child just waited for
    if p.returncode == -signal.SIGXCPU or (p.returncode == -signal.SIGKILL and used >= soft):
        return None, p.stderr, _cpu_limit_text(cpu_limit_s)
    return p.returncode, p.stderr, ""


def run_case(case: Case, base: Base, work: Path) -> Outcome:
    """Build ``case``'s inputs in ``work/<id>``, run it, judge it."""
    if case.needs_shared and not DICOM.is_dir():
        return Outcome(
            SKIP, f"{DICOM} is absent (the shared data folder is not beside this checkout)", "", None, 0.0
        )
    t = work / case.id
    if t.exists():
        shutil.rmtree(t)
    t.mkdir(parents=True)
    case.setup(Ctx(t, base))
    before = snapshot(t)
    argv = [a.replace("{t}", str(t)) for a in case.argv]
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    exc = None
    if case.subprocess:
        cmd = [sys.executable, "-m", "organseg", *argv]
        rc, stderr, timed_out = _run_subprocess(cmd, t, case.cpu_limit_s, case.mem_gb)
    else:
        disk = small_disk(t, case.disk_free) if case.disk_free is not None else None
        rc, stderr, exc, timed_out = _run_inprocess(argv, case.cpu_limit_s, disk)
    seconds, cpu_seconds = time.perf_counter() - t0, _cpu_seconds() - cpu0
    after = snapshot(t)

    def short(text: str) -> str:
        # Messages are judged and shown without the case folder: the folder's name holds the case id, which
        # would otherwise "name" the option or key a case expects.
        return text.replace(str(t) + os.sep, "").replace(str(t), ".").replace(str(base.root), "<base>")

    first = (str(exc).strip().splitlines() or [""])[0] if exc is not None else ""
    exc_text = None if exc is None else short(f"{type(exc).__name__}: {first}")
    verdict, reason, message = judge(case, rc, short(stderr), exc_text, timed_out, before, after)
    return Outcome(verdict, reason, message, rc, seconds, cpu_seconds)


def _error_line(verb: str, stderr: str) -> tuple[str | None, str]:
    """The ``organseg VERB[ SUB]: error: ...`` line and everything after it."""
    m = re.search(rf"^organseg {re.escape(verb)}( \S+)?: error: .*$", stderr, re.M | re.S)
    if not m:
        return None, ""
    tail = m.group(0).strip()
    return tail.splitlines()[0], tail


def _names(line: str, expect: str) -> bool:
    """``expect`` is a substring, or alternatives ``a|b`` (an option or its key: --batch-size|batch_size)."""
    return any(alt in line for alt in expect.split("|"))


def judge(
    case: Case, rc, stderr: str, exc: str | None, timed_out: bool | str, before: dict, after: dict
) -> tuple[str, str, str]:
    """(verdict, reason, message) of one run; ``exc`` is "Type: first line" of an exception that escaped
    ``main``; ``timed_out`` is false, or the limit the case ran past ("60 s of CPU time"). See the module
    docstring."""
    line, tail = _error_line(case.verb, stderr)
    last = exc or line or (stderr.strip().splitlines() or [""])[-1]
    changed = sorted(k for k in before if after.get(k) != before[k])
    new = sorted(k for k in after if k not in before)
    left = [k for k in new if Path(k).name.startswith(".") or not any(fnmatch(k, g) for g in case.allow_new)]
    if timed_out:
        limit = timed_out if isinstance(timed_out, str) else "its time limit"
        return BAD, f"still running after {limit} (accepted?)", last
    if rc is not None and rc < 0:
        return BAD, f"killed by {signal.Signals(-rc).name}, no message", last
    if rc == 0 and exc is None:  # what it printed is progress or results, not a message
        return BAD, "accepted: exit 0" + (f"; input changed: {', '.join(changed[:3])}" if changed else ""), ""
    if changed:
        return BAD, f"input changed or removed: {', '.join(changed[:3])}", last
    if left:
        more = f" (+{len(left) - 3})" if len(left) > 3 else ""
        return BAD, f"left {len(left)} new file(s): {', '.join(left[:3])}{more}", last
    if exc is not None:
        return TRACEBACK, f"exception escaped: {last}", last
    if "Traceback (most recent call last)" in stderr:
        return TRACEBACK, "traceback printed", last
    if line is None:
        return TRACEBACK, f"exit {rc} without an 'organseg {case.verb}: error:' line", last
    if tail != line:
        return TRACEBACK, "message runs over several lines", line
    if rc != 2:
        return TRACEBACK, f"exit {rc}, not 2", line
    missing = [e for e in case.expect if not _names(line, e)]
    if missing:
        return TRACEBACK, f"message does not name {', '.join(repr(m) for m in missing)}", line
    return CLEAN, "", line


# ---------------------------------------------------------------- docs/bad_input.md


INTRO = """\
Generated by `python tests/badinput/probe.py --write-docs` from the table in `tests/badinput/cases.py`;
`tests/test_bad_input_table.py` runs the same table as tests (and checks that every case is listed here).
Each case builds a small faulty input, runs `organseg ...` and expects **exit code 2 and one line**
`organseg VERB: error: MESSAGE` naming the file, key or option: no traceback, every input file unchanged,
nothing (not even a hidden temporary) left behind. Time limits: 60 s of CPU time (user and system, all
threads; 30 s for `train.compile`), a measure of the work done that a busy machine does not stretch, and a
10-minute wall-clock backstop that only a hang reaches. The message column is what the command printed (case
folders shortened to relative paths); a row that is not clean says first why (BAD: accepted, input
changed, output left, killed or hung; TRACEBACK: an exception, or a message that is missing, runs over
several lines or does not name what it must). To add a case, add a row (or a whole family) to `cases.py`
and re-run the generator; `--only ID...` runs a few cases, `--known` prints the ids that are not clean."""


# A held folder's message names its holder's pid, host and start time: the docs show them as placeholders so
# that regenerating the table changes no row whose outcome did not change.
_HOLDER = re.compile(r"pid \d+ on \S+ since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \([^)]*\)")


def _cell(text: str) -> str:
    text = _HOLDER.sub("pid <pid> on <host> since <time>", text)
    return text.replace("|", "\\|").replace("\n", " ")


def write_docs(results: dict[str, Outcome], path: Path = DOC) -> None:
    counts = {v: sum(o.verdict == v for o in results.values()) for v in (CLEAN, TRACEBACK, BAD, SKIP)}
    lines = [
        "# Bad input: every case of the probe and the message it gives",
        "",
        *INTRO.splitlines(),
        "",
        f"This run: {counts[CLEAN]} clean, {counts[TRACEBACK]} traceback or unclear, {counts[BAD]} bad"
        + (f", {counts[SKIP]} skipped (no ../shared)" if counts[SKIP] else "")
        + f", of {len(results)} cases.",
        "",
        "| case | verb | message |",
        "|---|---|---|",
    ]
    cases = by_id()
    for group, title in GROUPS.items():
        ids = [i for i in results if cases[i].group == group]
        if not ids:
            continue
        lines.append(f"| **{title}** | | |")
        for i in ids:
            o, c = results[i], cases[i]
            msg = f"`{_cell(o.message)}`" if o.message else ""
            if o.verdict != CLEAN:
                msg = f"**{o.verdict}** ({_cell(o.reason)}) {msg}".strip()
            lines.append(f"| `{i}` — {_cell(c.what)} | {c.verb} | {msg} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-docs", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    ap.add_argument("--only", nargs="+", metavar="ID", help="only these case ids (prefixes allowed)")
    ap.add_argument("--known", action="store_true", help="print the non-clean ids as a Python set")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    cases = CASES
    if args.only:
        cases = [c for c in CASES if any(c.id == o or c.id.startswith(o) for o in args.only)]
    results: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="organseg-probe-") as tmp:
        t0 = time.perf_counter()
        base = build_base(Path(tmp) / "base")
        print(f"built the good inputs in {time.perf_counter() - t0:.1f} s", flush=True)
        for case in cases:
            try:
                o = run_case(case, base, Path(tmp) / "cases")
            except Exception as exc:  # a fault of the table itself: report it, run the rest
                o = Outcome(ERROR, f"setup failed: {type(exc).__name__}: {exc}", "", None, 0.0)
            results[case.id] = o
            print(
                f"{o.verdict:9} {o.seconds:6.2f}s {o.cpu_seconds:6.2f}s CPU {case.id}: "
                + " | ".join(x for x in (o.reason, o.message) if x),
                flush=True,
            )
            shutil.rmtree(Path(tmp) / "cases" / case.id, ignore_errors=True)
    counts = {v: sum(o.verdict == v for o in results.values()) for v in (CLEAN, TRACEBACK, BAD, SKIP, ERROR)}
    print(" ".join(f"{k} {v}" for k, v in counts.items()) + f" of {len(results)} cases")
    if args.known:
        bad = sorted(i for i, o in results.items() if o.verdict in (TRACEBACK, BAD))
        print("KNOWN_FAILING_BEFORE_FIXES = {\n" + "".join(f'    "{i}",\n' for i in bad) + "}")
    if args.write_docs:
        if args.only:
            print("--write-docs needs the whole table (no --only)", file=sys.stderr)
            return 2
        write_docs(results)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
