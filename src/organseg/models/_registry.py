"""A small model registry in the spirit of timm: ``create_model(name, **overrides)``.

Besides its factory, a network may tell the registry two things the rest of the package checks up front
instead of failing deep inside a forward pass or a weight load: ``head``, the state-dict key of its output
layer's weight (the first dimension is the number of classes), and ``size_problem``, why a square input side
does not fit it (or None when it does).

Besides registered names, every accessor here takes a network of one's own: an import path
(``mypkg.nets:build_mynet``) or a name an installed package announces (entry-point group ``organseg.models``),
resolved by :mod:`organseg.models.external`; such a factory carries ``head`` and ``size_problem`` as
attributes (docs/networks.md).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from organseg.errors import ConfigError, UnknownModelError
from organseg.models import external

SizeRule = Callable[[int, dict[str, Any]], "str | None"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_HEADS: dict[str, str] = {}
_SIZE_RULES: dict[str, SizeRule] = {}


def register_model(
    name: str, *, head: str | None = None, size_problem: SizeRule | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name``; the factory's keyword defaults are the paper configuration.

    ``head``: state-dict key of the output layer's weight. ``size_problem(side, args)``: a reason why a
    ``side`` x ``side`` input does not fit the network built with ``args`` (constructor overrides), or None.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        if head is not None:
            _HEADS[name] = head
        if size_problem is not None:
            _SIZE_RULES[name] = size_problem
        return fn

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`: the registered networks, then those installed packages announce
    (entry points; an import path is accepted too but listed nowhere)."""
    return sorted(_MODELS) + [n for n in external.entry_point_names() if n not in _MODELS]


def _factory(name: str) -> Callable[..., nn.Module]:
    """The factory of a registered network or of one's own (resolved; NetworkLoadError if it cannot be)."""
    return _MODELS[name] if name in _MODELS else external.resolve(name).factory


def is_builtin(name: str) -> bool:
    """Whether ``name`` is registered in this package (not an import path nor an installed package's)."""
    return name in _MODELS


def model_source(name: str) -> dict[str, Any] | None:
    """What a checkpoint records of where network ``name`` comes from: None for a registered network; for
    one of one's own its import path, entry point, distribution and version (plain data); None too for a
    name that is neither (a checkpoint of it is refused when it is read, with the reason)."""
    if name in _MODELS or not external.is_external(name):
        return None
    try:
        return external.resolve(name).record()
    except external.NetworkLoadError:
        return None


def model_name_problem(name: str) -> str | None:
    """Why ``name`` is no network (naming the nearest registered name and all of them, or why an import path
    or entry point does not load), or None when it is one."""
    if name in _MODELS:
        return None
    if external.is_external(name):
        return external.problem(name)
    near = difflib.get_close_matches(str(name), list_models(), n=1, cutoff=0.5)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown model {name!r}{hint}; available: {', '.join(list_models())}"


def check_model_name(name: str, key: str = "model.name") -> None:
    """UnknownModelError (a ConfigError) naming ``key``, ``name`` and the nearest registered name, when
    ``name`` is no registered network."""
    problem = model_name_problem(name)
    if problem is not None:
        raise UnknownModelError(f"{key}: {problem}")


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model with the paper's configuration, any constructor argument overridden; an
    unknown ``name`` raises UnknownModelError."""
    check_model_name(name)
    return _factory(name)(**overrides)


def head_key(name: str) -> str | None:
    """The state-dict key of ``name``'s output layer weight (its first dimension is the class count)."""
    if name in _MODELS:
        return _HEADS.get(name)
    return getattr(_factory(name), "head", None)


def input_size_problem(name: str, side: int, args: dict[str, Any] | None = None) -> str | None:
    """Why a ``side`` x ``side`` input does not fit network ``name`` built with ``args``; None if it fits
    (or the network states no rule)."""
    rule = _SIZE_RULES.get(name) if name in _MODELS else getattr(_factory(name), "size_problem", None)
    return rule(side, dict(args or {})) if rule is not None else None


def check_input_size(
    name: str, side: int, args: dict[str, Any] | None = None, key: str = "train.img_size"
) -> None:
    """ConfigError naming ``key``, the reason and the nearest sizes that fit, when ``side`` does not fit."""
    problem = input_size_problem(name, side, args)
    if problem is None:
        return
    below = next((s for s in range(side - 1, 0, -1) if input_size_problem(name, s, args) is None), None)
    above = next((s for s in range(side + 1, side + 4097) if input_size_problem(name, s, args) is None), None)
    near = " or ".join(str(s) for s in (below, above) if s is not None)
    hint = f"; nearest sizes that fit: {near}" if near else ""
    raise ConfigError(f"{key}={side}: {name} {problem}{hint}")


def has_model(name: str) -> bool:
    """Whether ``name`` is a network: registered, or an import path or entry point that loads."""
    return model_name_problem(name) is None


def model_defaults(name: str) -> dict[str, Any]:
    """The factory's keyword defaults (the paper configuration) of network ``name``."""
    params = inspect.signature(_factory(name)).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def check_model_args(name: str, args: dict[str, Any], key: str = "model.args") -> None:
    """ConfigError naming the key when a constructor override is unknown or of another type than the
    factory's default (a bool where a number goes, a string where a list goes): caught before any work."""
    defaults = model_defaults(name)
    for arg, value in args.items():
        if arg not in defaults:
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"{key}.{arg}: {name} has no argument {arg!r}; it takes {known}")
        default = defaults[arg]
        if default is None or value is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int | float):
            # img_size also takes (h, w); every other number is one number
            numbers = value if arg == "img_size" and isinstance(value, list | tuple) else [value]
            ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers)
        elif isinstance(default, list | tuple):
            ok = isinstance(value, list | tuple)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ConfigError(
                f"{key}.{arg}: expected a value like its default {default!r} ({type(default).__name__}), "
                f"got {value!r} ({type(value).__name__})"
            )


def takes_image_size(name: str) -> bool:
    """Whether network ``name`` is built for one input size (its factory takes ``img_size``: Swin-Unet)."""
    return "img_size" in model_defaults(name)
