"""Networks of your own: a factory named by import path (``mypkg.nets:build_mynet``) or announced by an
installed package under the entry-point group :data:`ENTRY_POINT_GROUP` (``organseg.models``).

The contract such a factory keeps is written once, in docs/networks.md; in short: its keyword defaults are its
configuration (``model.args`` are checked against them, as for a registered network); it takes
``num_classes`` and ``in_chans``; the network maps a (B, 1, H, W) float input to (B, num_classes, H, W)
logits; the factory may carry ``size_problem`` (a function ``(side, args) -> str | None``, as
``register_model`` takes) and ``head`` (the state-dict key of the output weight) as attributes, and the
network class may set ``prefers_channels_last = True`` (:mod:`organseg.models.layout`).

:func:`check_contract` builds the network once on the CPU and runs one forward pass, so that a factory
that breaks the contract is one ``ConfigError`` naming ``model.name`` before a run starts. Importing the
module runs its code: that is the user's own code, loaded because the configuration names it (checkpoints
are still read with ``weights_only=True``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from organseg.errors import ConfigError

#: The entry-point group through which an installed package announces networks (value: ``module:factory``).
ENTRY_POINT_GROUP = "organseg.models"
#: What every message about a network of one's own points to.
DOCS = "docs/networks.md"
#: The keyword arguments organseg passes to every factory (the names the built-in factories use).
REQUIRED_ARGS = ("num_classes", "in_chans")
#: Classes of the contract check's forward pass when ``model.args`` does not set ``num_classes``: not a
#: common default, so that a network that ignores the argument is caught.
_PROBE_CLASSES = 3


class NetworkLoadError(ConfigError):
    """A network named by import path or entry point cannot be loaded (the message says why)."""


@dataclass(frozen=True)
class External:
    """A resolved network of one's own: the name as configured, its import path, the entry point it came
    from (None for an import path) and the distribution that provides its module (None for a local one)."""

    name: str
    path: str
    entry_point: str | None
    factory: Callable[..., nn.Module]
    distribution: str | None
    version: str | None

    @property
    def module(self) -> str:
        return self.path.partition(":")[0]

    def record(self) -> dict[str, Any]:
        """What a checkpoint records of it (plain data, for ``weights_only`` loading)."""
        return {
            "path": self.path,
            "entry_point": self.entry_point,
            "distribution": self.distribution,
            "version": self.version,
        }


_RESOLVED: dict[str, External] = {}
_CHECKED: set[str] = set()


def is_import_path(name: str) -> bool:
    """Whether ``name`` has the form ``module.path:factory``."""
    return isinstance(name, str) and ":" in name


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def entry_point_names() -> list[str]:
    """Names of the networks installed packages announce (not loaded: listing runs none of their code)."""
    return sorted(_entry_points())


def _distribution(module: str) -> tuple[str | None, str | None]:
    """The distribution (name, version) that installs top-level package of ``module``; (None, None) for a
    module no installed distribution provides (a local file on ``sys.path``)."""
    top = module.split(".")[0]
    names = importlib.metadata.packages_distributions().get(top) or []
    if not names:
        return None, None
    dist = names[0]
    try:
        return dist, importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return dist, None


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _load_path(name: str, path: str, what: str) -> Callable[..., nn.Module]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or ":" in attr:
        raise NetworkLoadError(f"{what} {path!r} is not an import path: expected 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NetworkLoadError(
            f"{what} {path!r}: cannot import module {module_name!r} ({_first_line(exc)}): install its "
            "package or put the folder holding it on PYTHONPATH",
        ) from None
    except Exception as exc:  # the user's module raised while it was imported
        raise NetworkLoadError(
            f"{what} {path!r}: importing module {module_name!r} raised {_first_line(exc)}"
        ) from None
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise NetworkLoadError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise NetworkLoadError(
            f"{what} {path!r}: {attr!r} is of type {type(factory).__name__}, not a callable factory "
            f"returning the network (see {DOCS})"
        )
    return factory


def is_external(name: str) -> bool:
    """Whether ``name`` is an import path or a name an installed package announces."""
    # _RESOLVED first: listing the entry points reads every installed distribution's metadata
    return is_import_path(name) or name in _RESOLVED or (isinstance(name, str) and name in _entry_points())


def resolve(name: str) -> External:
    """The factory ``name`` names (an import path or an entry point's name); NetworkLoadError (a ConfigError)
    saying what failed. Successes are remembered for the process; failures are tried again."""
    if name in _RESOLVED:
        return _RESOLVED[name]
    if is_import_path(name):
        path, entry = name, None
        factory = _load_path(name, name, "import path")
    else:
        ep = _entry_points().get(name)
        if ep is None:
            raise NetworkLoadError(f"no network {name!r}: neither an import path nor an entry point")
        provider = ep.dist.name if ep.dist is not None else "an installed package"
        what = f"entry point {name!r} (group {ENTRY_POINT_GROUP}, from {provider})"
        path, entry = f"{ep.module}:{ep.attr}" if ep.attr else ep.value, name  # extras ("[gpu]") aside
        factory = _load_path(name, path, what)
    dist, version = _distribution(path.partition(":")[0])
    _check_signature(name, factory)
    ext = External(name, path, entry, factory, dist, version)
    _RESOLVED[name] = ext
    return ext


def _check_signature(name: str, factory: Callable[..., Any]) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return  # a builtin or C callable: its arguments are checked by the contract's call
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = [a for a in REQUIRED_ARGS if a not in params and not takes_any]
    if missing:
        raise NetworkLoadError(
            f"{name}: the factory takes no {' / '.join(missing)} argument: organseg passes num_classes and "
            f"in_chans to every network (see {DOCS})"
        )
    size_rule = getattr(factory, "size_problem", None)
    if size_rule is not None and not callable(size_rule):
        raise NetworkLoadError(
            f"{name}: the factory's size_problem is not a function (side, args) -> str | None"
        )
    head = getattr(factory, "head", None)
    if head is not None and not isinstance(head, str):
        raise NetworkLoadError(f"{name}: the factory's head should be a state-dict key (str), got {head!r}")


def missing_module(record: Any) -> str | None:
    """For a checkpoint's ``model_source`` record: why its module cannot be imported here and what to
    install (the package and version recorded, or PYTHONPATH for a local module); None when it imports."""
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        return None
    module = record["path"].partition(":")[0]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        why = _first_line(exc)
    except Exception:
        return None  # it imports but raises: the ordinary message says what it raised
    else:
        return None
    dist, version = record.get("distribution"), record.get("version")
    if dist:
        pin = f"{dist}=={version}" if version else str(dist)
        fix = f"install {pin}, the package it was trained with (pip install '{pin}')"
    else:
        fix = "it was a local module when the checkpoint was written: put the folder holding it on PYTHONPATH"
    return f"its network's module {module!r} cannot be imported here ({why}): {fix}"


def problem(name: str) -> str | None:
    """Why ``name`` cannot be loaded as a network of one's own (one line), or None when it can."""
    try:
        resolve(name)
    except NetworkLoadError as exc:
        return str(exc)
    return None


def check_contract(name: str, args: dict[str, Any], side: int, key: str = "model.name") -> None:
    """Build network ``name`` with ``args`` on the CPU and run one ``side`` x ``side`` input through it;
    ConfigError naming ``key`` when the factory raises, returns no ``nn.Module``, or the output is no
    (1, num_classes, side, side) tensor. Once per (name, args, side) in a process."""
    signature = json.dumps([name, args, side], sort_keys=True, default=str)
    if signature in _CHECKED:
        return
    ext = resolve(name)
    args = {"num_classes": _PROBE_CLASSES, **args}
    classes = args["num_classes"]
    where = f"{key}={name}"
    # The probe must not move the global random stream: the run seeds itself later, but a notebook may not.
    with torch.random.fork_rng(devices=[]):
        try:
            model = ext.factory(**args)
        except Exception as exc:
            raise ConfigError(
                f"{where}: the factory {ext.path}(**{args}) raised {_first_line(exc)}"
            ) from None
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"{where}: the factory returned a {type(model).__name__}, not a torch.nn.Module (see {DOCS})"
            )
        shape_in = (1, 1, side, side)
        try:
            with torch.no_grad():
                out = model.eval()(torch.rand(shape_in))
        except Exception as exc:
            raise ConfigError(
                f"{where}: the forward pass of a {shape_in} input raised {_first_line(exc)}; a network that "
                f"takes only some input sizes states them with size_problem (see {DOCS})"
            ) from None
    expected = (1, classes, side, side)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != expected or not out.is_floating_point():
        raise ConfigError(
            f"{where}: input {shape_in} gave output {got}; expected float logits {expected} "
            f"(B, num_classes, H, W) (see {DOCS})"
        )
    head = getattr(ext.factory, "head", None)
    if head is not None:
        weights = model.state_dict()
        if head not in weights:
            raise ConfigError(f"{where}: the factory's head {head!r} is no state-dict key of the network")
        if weights[head].shape[0] != classes:
            raise ConfigError(
                f"{where}: the factory's head {head!r} has {weights[head].shape[0]} rows, not {classes} "
                "(num_classes)"
            )
    _CHECKED.add(signature)
