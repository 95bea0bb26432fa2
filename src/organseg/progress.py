"""Progress for every loop organseg shows: tqdm's bar on a terminal, plain lines anywhere else.

A tqdm bar redraws itself with carriage returns; written to a file or a pipe (a CI log, ``nohup``, ``2>log``)
those redraws pile up in one endless line (a 40-case ``organseg test`` wrote ~60 KB of them). So when the
stream is not a terminal, :func:`progress_bar` returns a :class:`PlainProgress` instead: one ordinary line
every :data:`PLAIN_INTERVAL_S` seconds and one at the end, each with count/total, rate and ETA.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

from organseg.formatting import duration

#: seconds between two plain progress lines (a 40-case test of ten minutes writes about 60 lines)
PLAIN_INTERVAL_S = 10.0

# Every bar progress_bar made that may still be open: a loop that raises leaves its bar open until the
# exception is gone (the traceback keeps the loop's frame), which is after the command line printed it.
_bars: weakref.WeakSet = weakref.WeakSet()


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal (where a redrawn bar makes sense)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """The part of tqdm's interface organseg uses, writing whole lines (no ``\\r``) at a bounded rate."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
        leave: bool = True,
        initial: int = 0,
        file: TextIO | None = None,
        interval: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.disable, self.leave, self.initial, self.n = disable, leave, initial, initial
        self.file, self.interval, self.clock = file, interval, clock
        self.postfix = ""
        self._t0 = self._last = clock()
        self._shown = initial
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("PlainProgress without an iterable is not iterable")
        for item in self.iterable:
            yield item
            self.update(1)
        # Only a finished loop prints its last line here. A loop left by an exception stays open until the
        # command line ends it without one (abandon_bars), one left by ``break`` until it is dropped.
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        """Print a line if the last one is :attr:`interval` seconds old (callers may also set ``n``)."""
        if not self.disable and self.clock() - self._last >= self.interval:
            self._emit()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A finished loop ends with one line (the summary a log reader wants); an inner, transient loop
        # (leave=False, e.g. the slices of one case) only prints while it is slow.
        if not self.disable and self.leave and self.n != self._shown:
            self._emit()

    def line(self) -> str:
        """``desc: n/total unit (pct%), rate unit/s, elapsed h:mm:ss, ETA h:mm:ss, postfix``."""
        elapsed = max(self.clock() - self._t0, 0.0)
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else math.nan
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        if math.isfinite(rate):
            parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {duration(elapsed, 'clock')}")
        if self.total and math.isfinite(rate) and rate > 0:
            parts.append(f"ETA {duration((self.total - self.n) / rate, 'clock')}")
        if self.postfix:
            parts.append(self.postfix)
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _emit(self) -> None:
        stream = self.file if self.file is not None else sys.stderr
        print(self.line(), file=stream, flush=True)
        self._last = self.clock()
        self._shown = self.n


class _TerminalBar(tqdm):
    """tqdm's bar, except that a loop left early does not close it: tqdm's own ``__iter__`` closes it (and
    draws it, with a newline, as it stood) as soon as an exception leaves the loop, before the command line
    prints the error; kept open, :func:`abandon_bars` erases it instead."""

    def __iter__(self) -> Iterator:
        inner = super().__iter__()
        self._inner = inner  # closed with the bar, not with the loop
        yield from _detached(inner)


def _detached(inner: Iterator) -> Iterator:
    # A plain for loop, not ``yield from``: closing this generator must not close ``inner``.
    for item in inner:  # noqa: UP028 (see above)
        yield item


def abandon_bars() -> None:
    """End every open bar of a loop an error interrupted, before the error is printed: a terminal bar is
    erased (no half-drawn line before the message), a plain one prints no final line (its "n/total" would
    read as a result)."""
    for bar in list(_bars):
        if isinstance(bar, PlainProgress):
            bar._closed = True
        else:
            bar.leave = False
            bar.close()
    _bars.clear()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
    initial: int = 0,
    file: TextIO | None = None,
    **bar_options: Any,
) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal or a notebook, else a :class:`PlainProgress`.

    ``bar_options`` (e.g. ``dynamic_ncols``) only apply to the tqdm bar.
    """
    stream = file if file is not None else sys.stderr
    # A notebook shows the tqdm widget too.
    terminal = is_terminal(stream) or (file is None and "ipykernel" in sys.modules)
    bar_class, extra = (_TerminalBar, bar_options) if terminal else (PlainProgress, {})
    bar = bar_class(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        leave=leave,
        initial=initial,
        file=file,
        **extra,
    )
    if not disable:
        _bars.add(bar)
    return bar


def progress_write(message: str) -> None:
    """Print a line without breaking a bar on the terminal (tqdm.write), plainly elsewhere."""
    if is_terminal(sys.stderr):
        tqdm.write(message)
    else:
        print(message, flush=True)
