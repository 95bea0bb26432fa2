"""Typed, ranged values: one checker for configuration keys and command-line options.

A :class:`Rule` says what a value may be; :func:`check_value` checks (and exactly converts) a value against it
and names the key or option in a one-line ConfigError, e.g. ``train.batch_size: expected an integer >= 1, got
true (bool)``. :func:`option` makes the same rule an argparse ``type``, so ``--max-cases -1`` and
``--set val.max_cases=-1`` are refused with the same words. The configuration's table of rules is
``organseg.training.config.SCHEMA``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from organseg.errors import ConfigError


def max_threads() -> int:
    """The most threads (or worker processes) one setting may ask for: 4 x this machine's cores. Far more
    than that only slows the work down, and OpenMP dies with a segmentation fault long before 100000."""
    return 4 * (os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None where unknown: how many
    processes, or how much data held in memory, a machine can take."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Rule:
    """What one configuration key accepts: a kind, a range, or a list of choices, and whether null is allowed.

    ``kind``: "int" (not bool; a whole float like 1e4 is taken as 10000), "float" (an int or a numeric
    string such as "1e-3" is taken), "bool", "str", "choice" (one of ``choices``, bools compared by identity),
    "device" (auto, cpu, cuda or cuda:N), "mapping". ``hi`` may be a function (bounds that depend on the
    machine, see :func:`max_threads`). ``why`` is appended to range errors.
    """

    kind: str
    lo: float | None = None
    hi: float | Callable[[], float] | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False
    why: str = ""

    def upper(self) -> float | None:
        return self.hi() if callable(self.hi) else self.hi

    def expected(self) -> str:
        """``an integer >= 1``, ``a number in [0, 1)``, ``one of fp32, bf16, fp16`` ..."""
        if self.kind == "choice":
            text = "one of " + ", ".join(_show(c) for c in self.choices)
        elif self.kind == "device":
            text = "auto, cpu, cuda or cuda:N"
        else:
            noun = {
                "int": "an integer",
                "float": "a number",
                "bool": "true or false",
                "str": "a string",
                "mapping": "a mapping",
            }[self.kind]
            lo, hi = self.lo, self.upper()
            if lo is not None and hi is not None:
                left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
                text = f"{noun} in {left}{_num(lo)}, {_num(hi)}{right}"
            elif lo is not None:
                text = f"{noun} {'>' if self.lo_open else '>='} {_num(lo)}"
            elif hi is not None:
                text = f"{noun} {'<' if self.hi_open else '<='} {_num(hi)}"
            else:
                text = noun
        return text + (" or null" if self.optional else "")


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML: true, null, 'text', 3."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


_NUMBER = re.compile(r"^\s*[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?\s*$")
_DEVICE = re.compile(r"^(?:auto|cpu|cuda(?::\d+)?)$")
_SEED_MAX = 2**63 - 1  # torch.manual_seed takes 64-bit seeds; SeedSequence (derive_seed) needs >= 0


def check_value(key: str, value: Any, rule: Rule) -> Any:
    """``value`` checked against ``rule`` and converted where the conversion is exact ("1e-3" -> 0.001,
    1e4 -> 10000 for an integer); ConfigError ``KEY: expected ..., got VALUE (TYPE)`` otherwise."""

    def fail() -> ConfigError:
        why = f" ({rule.why})" if rule.why else ""
        got = f"{_show(value)} ({type(value).__name__})"
        return ConfigError(f"{key}: expected {rule.expected()}{why}, got {got}")

    if value is None:
        if rule.optional:
            return None
        raise fail()
    if rule.kind == "choice":
        for choice in rule.choices:  # `1 in (True, False)` is true in Python: compare bools by identity
            same_kind = isinstance(value, bool) == isinstance(choice, bool)
            if value is choice or (same_kind and value == choice):
                return choice
        raise fail()
    if rule.kind == "bool":
        if isinstance(value, bool):
            return value
        raise fail()
    if rule.kind == "str":
        if isinstance(value, str) and value.strip():
            return value
        raise fail()
    if rule.kind == "mapping":
        if isinstance(value, dict):
            return value
        raise fail()
    if rule.kind == "device":
        if isinstance(value, str) and _DEVICE.match(value.strip()):
            return value.strip()
        raise fail()
    # Numbers. A bool is an int in Python, never in a configuration. A numeric string is a YAML 1.1 quirk
    # ("1e-3" in a file read elsewhere) or a quoted number: taken, and recorded as the number.
    number = float(value.replace("_", "")) if isinstance(value, str) and _NUMBER.match(value) else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise fail()
    if rule.kind == "int" and isinstance(number, float):
        if not number.is_integer() or abs(number) >= 2**53:
            raise fail()
        number = int(number)
    lo, hi = rule.lo, rule.upper()
    if lo is not None and (number <= lo if rule.lo_open else number < lo):
        raise fail()
    if hi is not None and (number >= hi if rule.hi_open else number > hi):
        raise fail()
    return number


POSITIVE_INT = Rule("int", lo=1)
OPTIONAL_POSITIVE_INT = Rule("int", lo=1, optional=True)
SEED = Rule("int", lo=0, hi=_SEED_MAX)
FOLDS = Rule("int", lo=2, hi=100, why="folds of the training subjects")
WORKERS = Rule("int", lo=1, hi=max_threads, why="4 x the CPU cores here")
FINITE = Rule("float")


def option(rule: Rule) -> Callable[[str], Any]:
    """An argparse ``type`` checking a command-line value with ``rule``: argparse then prints
    ``organseg VERB: error: argument --max-cases: expected an integer >= 1, got '-1'`` and exits 2."""

    def parse(text: str) -> Any:
        try:
            return check_value("value", text, rule)
        except ConfigError:
            why = f" ({rule.why})" if rule.why else ""
            raise argparse.ArgumentTypeError(f"expected {rule.expected()}{why}, got {text!r}") from None

    parse.__name__ = rule.expected()  # argparse's fallback message names the type
    return parse
