"""Issue 10's bad-input table (tests/badinput/cases.py) run as tests: every faulty input must end CLEAN, i.e.
exit 2 with one line ``organseg VERB: error: ...`` naming the file, key or option, no traceback, every input
file unchanged and nothing left behind. The probe's judge is tested on its own below, and docs/bad_input.md
must list every case."""

from __future__ import annotations

import re
import sys
import time

import pytest

import badinput.probe as probe
import organseg.cli.main
from badinput.cases import CASES, GROUPS, Case, by_id
from badinput.inputs import build_base
from badinput.probe import BAD, CLEAN, DOC, SKIP, TRACEBACK, judge, run_case


@pytest.fixture(scope="session")
def probe_base(tmp_path_factory):
    """The good inputs every case copies and damages, built once per session."""
    return build_base(tmp_path_factory.mktemp("badinput") / "base")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_ends_clean(case: Case, probe_base, tmp_path) -> None:
    outcome = run_case(case, probe_base, tmp_path)
    if outcome.verdict == SKIP:
        pytest.skip(outcome.reason)
    assert outcome.verdict == CLEAN, f"{outcome.verdict}: {outcome.reason} | {outcome.message}"


def test_the_table_covers_every_verb_and_class() -> None:
    cases = by_id()  # also: ids are unique
    assert len(cases) >= 250
    verbs = {c.verb for c in CASES}
    from organseg.cli.main import _verb_modules

    assert verbs == set(_verb_modules())  # every verb of the command line, export included
    assert {c.group for c in CASES} == set(GROUPS)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+", c.id) for c in CASES)
    for c in CASES:  # every case names at least one thing its message must hold, and runs the verb it claims
        assert c.expect or c.verb == "info", c.id
        assert c.argv[0] == c.verb, c.id


def test_docs_list_every_case() -> None:
    text = DOC.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([^`]+)`", text, re.M))
    missing = sorted(c.id for c in CASES if c.id not in listed)
    assert not missing, (
        f"{DOC.name} lacks {len(missing)} case(s), e.g. {missing[:5]}: "
        "run python tests/badinput/probe.py --write-docs"
    )
    stale = sorted(listed - {c.id for c in CASES})
    assert not stale, f"{DOC.name} lists case(s) no longer in the table: {stale[:5]}"


# ---------------------------------------------------------------- the judge itself

CASE = Case("x", "predict", "a fault", lambda c: None, ("predict",), ("scan.nii.gz",))
FILES = {"scan.nii.gz": "h1", "ckpt.pt": "h2"}
LINE = "organseg predict: error: scan.nii.gz: 2-D image"


@pytest.mark.parametrize(
    ("rc", "stderr", "exc", "timed_out", "after", "verdict", "why"),
    [
        (2, LINE + "\n", None, False, FILES, CLEAN, ""),
        (2, "usage: organseg predict ...\n" + LINE + "\n", None, False, FILES, CLEAN, ""),  # argparse style
        (0, "", None, False, {**FILES, "seg.nii.gz": "h3"}, BAD, "accepted"),
        (0, "", None, False, {**FILES, "scan.nii.gz": "h9"}, BAD, "accepted: exit 0; input changed"),
        (2, LINE, None, False, {"ckpt.pt": "h2"}, BAD, "input changed"),
        (2, LINE, None, False, {**FILES, ".seg.nii.gz.tmp": "h3"}, BAD, "new file"),
        (None, "", None, True, FILES, BAD, "still running"),
        (-11, "", None, False, FILES, BAD, "SIGSEGV"),
        (None, "", "KeyError: 'model'", False, FILES, TRACEBACK, "KeyError"),
        (None, "", "OSError: disk", False, {**FILES, "seg.nii.gz": "h3"}, BAD, "new file"),
        (
            1,
            "Traceback (most recent call last):\n  ...\nValueError: x\n",
            None,
            False,
            FILES,
            TRACEBACK,
            "traceback",
        ),
        (2, "organseg predict: error: something\n", None, False, FILES, TRACEBACK, "does not name"),
        (2, "organseg predict: error: a (scan.nii.gz)\n", None, False, FILES, CLEAN, ""),
        (2, LINE + "\nsecond line\n", None, False, FILES, TRACEBACK, "several lines"),
        (2, "organseg test: error: scan.nii.gz\n", None, False, FILES, TRACEBACK, "without"),
        (1, LINE + "\n", None, False, FILES, TRACEBACK, "exit 1"),
    ],
)
def test_judge(rc, stderr, exc, timed_out, after, verdict, why) -> None:
    got, reason, _ = judge(CASE, rc, stderr, exc, timed_out, FILES, after)
    assert got == verdict and why in reason, (got, reason)


def test_judge_takes_alternatives() -> None:
    case = Case("z", "test", "", lambda c: None, ("test",), ("--batch-size|batch_size",))
    assert judge(case, 2, "organseg test: error: batch_size must be >= 1", None, False, {}, {})[0] == CLEAN
    assert judge(case, 2, "organseg test: error: --batch-size must be >= 1", None, False, {}, {})[0] == CLEAN
    assert judge(case, 2, "organseg test: error: must be >= 1", None, False, {}, {})[0] == TRACEBACK


def test_judge_allows_declared_outputs() -> None:
    case = Case("y", "predict", "", lambda c: None, ("predict",), ("scan.nii.gz",), allow_new=("log/*",))
    assert judge(case, 2, LINE, None, False, FILES, {**FILES, "log/a.txt": "h"})[0] == CLEAN
    # a hidden temporary is never allowed, even in a declared place
    assert judge(case, 2, LINE, None, False, FILES, {**FILES, "log/.a.tmp": "h"})[0] == BAD


# ---------------------------------------------------------------- the time limits: work done, not wall time


def _busy(argv) -> int:
    while True:
        pass


def _sleepy(argv) -> int:
    time.sleep(1.5)
    return 2


def test_an_in_process_case_is_stopped_by_its_cpu_time(monkeypatch) -> None:
    monkeypatch.setattr(organseg.cli.main, "main", _busy)
    t0 = time.perf_counter()
    rc, _, exc, timed_out = probe._run_inprocess(["train"], 0.5)
    assert rc is None and exc is None and timed_out == "0.5 s of CPU time"
    assert time.perf_counter() - t0 < 60


def test_waiting_uses_no_cpu_time_and_only_the_backstop_stops_it(monkeypatch) -> None:
    # 1.5 s of wall clock against a 0.5 s CPU limit: a wait (or a busy machine) is not work done.
    monkeypatch.setattr(organseg.cli.main, "main", _sleepy)
    assert probe._run_inprocess(["train"], 0.5) == (2, "", None, "")
    monkeypatch.setattr(probe, "WALL_LIMIT_S", 0.5)
    rc, _, exc, timed_out = probe._run_inprocess(["train"], 60)
    assert rc is None and exc is None and timed_out == "the 0.5 s wall-clock backstop"


def test_a_subprocess_case_runs_under_a_cpu_limit_and_the_backstop(tmp_path, monkeypatch) -> None:
    busy = [sys.executable, "-c", "while True: pass"]
    assert probe._run_subprocess(busy, tmp_path, 1, None) == (None, "", "1 s of CPU time")
    monkeypatch.setattr(probe, "WALL_LIMIT_S", 1.0)
    sleepy = [sys.executable, "-c", "import time; time.sleep(30)"]
    assert probe._run_subprocess(sleepy, tmp_path, 60, None)[::2] == (None, "the 1 s wall-clock backstop")
    ok = [sys.executable, "-c", "import sys; sys.exit(2)"]
    assert probe._run_subprocess(ok, tmp_path, 60, None) == (2, "", "")
