"""How a state dict and a network disagree, in one line: the one wording of every weight loader's message
(organseg checkpoints in :mod:`organseg.checkpoint`, published weights in
:mod:`organseg.models.pretrained`)."""

from __future__ import annotations

from collections.abc import Callable


def first_keys(items: list[str], n: int = 5) -> str:
    """The first ``n`` names, then how many more: ``a, b, c, d, e and 7 more``."""
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def describe_mismatch(
    missing: list[str],
    unexpected: list[str],
    shapes: list[str],
    shapes_title: str = "shape mismatches",
    first: Callable[..., str] = first_keys,
) -> str:
    """Missing keys, unexpected keys and shape mismatches, the first few of each named, in one line."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys {first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys {first(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} {shapes_title} {first(shapes, 3)}")
    return "; ".join(parts)
