"""``organseg`` entry point. Each verb lives in ``organseg/cli/<verb>.py`` and exposes
``HELP``, ``add_parser(subparsers)`` and ``run(args) -> int``; verbs are discovered, so adding one touches one
file."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from organseg import __version__
from organseg.errors import OrgansegError
from organseg.fileio import NO_ROOM, no_room_error
from organseg.progress import abandon_bars
from organseg.runtime import tune_malloc
from organseg.stopping import StopSignal, stop_on_signals, stop_with_parent

# The order verbs appear in --help: the path a user walks.
_ORDER = [
    "demo",
    "info",
    "phantom",
    "prepare",
    "pretrain",
    "train",
    "test",
    "predict",
    "export",
    "report",
    "compare",
]


def _verb_modules() -> list[str]:
    import organseg.cli as pkg

    names = [
        m.name
        for m in pkgutil.iter_modules(pkg.__path__)
        if m.name not in ("main",) and not m.name.startswith("_")
    ]
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or, with ``verb``, that verb's parser in full and every other verb as its
    ``HELP`` line only (all of them so for a ``verb`` that names none). A verb's options may need its heavy
    dependencies (the presets list needs the model registry, hence torch: seconds); ``organseg --help`` and
    one verb's start should not pay for every verb's."""
    parser = argparse.ArgumentParser(
        prog="organseg",
        description="U-Net and Swin-Unet for multi-organ CT and cardiac MRI: reproduce, compare, apply.",
    )
    parser.add_argument("--version", action="version", version=f"organseg {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in _verb_modules():
        module = importlib.import_module(f"organseg.cli.{name}")
        full = verb is None or verb == name
        p = module.add_parser(sub) if full else sub.add_parser(name, help=module.HELP)
        p.set_defaults(_run=module.run)
    return parser


def named_verb(argv: Sequence[str]) -> str | None:
    """The verb of a command line: its first word that is not an option (``organseg`` itself has only
    ``--help`` and ``--version``, which take no value)."""
    return next((str(a) for a in argv if not str(a).startswith("-")), None)


def describe_os_error(exc: OSError) -> str:
    """``PATH: problem`` for an OSError (both paths of a failed rename), else its text."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return reason
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{where}: {reason}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = named_verb(argv)
    parser = build_parser(verb or "")  # no verb named (``organseg --help``): each verb's help line only
    args = parser.parse_args(argv)
    tune_malloc()
    try:
        with stop_on_signals():
            stop_with_parent()  # a study's run: stop when the study is killed (organseg.stopping)
            return int(args._run(args) or 0)
    except StopSignal as exc:
        # SIGTERM, SIGHUP or SIGINT: the clean-ups ran on the way out (children stopped, temporaries removed)
        abandon_bars()
        print(f"organseg {args.verb}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OrgansegError as exc:
        abandon_bars()
        print(f"organseg {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        abandon_bars()
        # Last resort: every known output fault has its own message (organseg.fileio); an unforeseen one
        # (a full disk under a file that grows in place: metrics.jsonl) ends in one line naming the path.
        if exc.errno in NO_ROOM and exc.filename is not None:
            exc = no_room_error(exc.filename, exc.errno)
            print(f"organseg {args.verb}: error: {exc}", file=sys.stderr)
        else:
            print(f"organseg {args.verb}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        abandon_bars()
        print(f"organseg {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
