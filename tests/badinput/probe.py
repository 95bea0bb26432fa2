"""Run the bad-input table and judge each case:
``python tests/badinput/probe.py [--write-docs] [--only ID...] [--known]``.

A case is CLEAN when ``organseg ARGV`` exits 2 with one error line ``organseg VERB: error: ...`` that
holds the expected substrings, shows no traceback, changes no input file and leaves no new file (temporaries
included).
TRACEBACK: an exception escaped ``main``, or the message is missing, multi-line or lacks what it must name.
BAD: the fault was accepted (exit 0), an input changed, output was left behind, the process was killed
(signal) or it ran past its time limit. BAD is judged before TRACEBACK: a traceback that also left a half
output is BAD."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import locale
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

CLEAN, TRACEBACK, BAD, SKIP, ERROR = "CLEAN", "TRACEBACK", "BAD", "SKIP", "ERROR"
DOC = ROOT / "docs" / "bad_input.md"


@dataclass
class Outcome:
    verdict: str
    reason: str  # why it is not CLEAN ("" when it is)
    message: str  # the error line (or the last stderr line), folder names shortened
    rc: int | None
    seconds: float


class _TimeUp(BaseException):
    """Raised by SIGALRM inside an in-process case that ran past its limit (BaseException: no handler in
    organseg may swallow it)."""


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run_inprocess(argv: list[str], timeout: float) -> tuple[int | None, str, BaseException | None, bool]:
    import torch

    from organseg.cli.main import main

    err, out = io.StringIO(), io.StringIO()
    # A case may change process-wide settings (train.threads, train.deterministic); later cases must not care.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rc, exc, timed_out = None, None, False
    saved_locale = locale.setlocale(locale.LC_ALL)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    except _TimeUp:
        timed_out = True
    except BaseException as e:  # noqa: BLE001 - that is what the probe looks for
        exc = e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        locale.setlocale(locale.LC_ALL, saved_locale)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return rc, err.getvalue(), exc, timed_out


def _alarm(signum, frame):
    raise _TimeUp()


def _run_subprocess(argv: list[str], cwd: Path, timeout: float, mem_gb: float | None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}

    def limit():
        if mem_gb:
            size = int(mem_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    try:
        p = subprocess.run(
            [sys.executable, "-m", "organseg", *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, stderr, True
    return p.returncode, p.stderr, False


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
    t0 = time.perf_counter()
    exc = None
    if case.subprocess:
        rc, stderr, timed_out = _run_subprocess(argv, t, case.timeout, case.mem_gb)
    else:
        rc, stderr, exc, timed_out = _run_inprocess(argv, case.timeout)
    seconds = time.perf_counter() - t0
    after = snapshot(t)

    def short(text: str) -> str:
        # Messages are judged and shown without the case folder: the folder's name holds the case id, which
        # would otherwise "name" the option or key a case expects.
        return text.replace(str(t) + os.sep, "").replace(str(t), ".").replace(str(base.root), "<base>")

    first = (str(exc).strip().splitlines() or [""])[0] if exc is not None else ""
    exc_text = None if exc is None else short(f"{type(exc).__name__}: {first}")
    verdict, reason, message = judge(case, rc, short(stderr), exc_text, timed_out, before, after)
    return Outcome(verdict, reason, message, rc, seconds)


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
    case: Case, rc, stderr: str, exc: str | None, timed_out: bool, before: dict, after: dict
) -> tuple[str, str, str]:
    """(verdict, reason, message) of one run; ``exc`` is "Type: first line" of an exception that escaped
    ``main``. See the module docstring."""
    line, tail = _error_line(case.verb, stderr)
    last = exc or line or (stderr.strip().splitlines() or [""])[-1]
    changed = sorted(k for k in before if after.get(k) != before[k])
    new = sorted(k for k in after if k not in before)
    left = [k for k in new if Path(k).name.startswith(".") or not any(fnmatch(k, g) for g in case.allow_new)]
    if timed_out:
        return BAD, f"still running after {case.timeout:.0f} s (accepted?)", last
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
nothing (not even a hidden temporary) left behind. The message column is what the command printed (case
folders shortened to relative paths); a row that is not clean says first why (BAD: accepted, input
changed, output left, killed or hung; TRACEBACK: an exception, or a message that is missing, runs over
several lines or does not name what it must). To add a case, add a row (or a whole family) to `cases.py`
and re-run the generator; `--only ID...` runs a few cases, `--known` prints the ids that are not clean."""


def _cell(text: str) -> str:
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
                f"{o.verdict:9} {o.seconds:6.2f}s {case.id}: "
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
