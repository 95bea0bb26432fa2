"""The grid of a study: ``--set``/``--seeds`` parsing, run names, and the planned runs with their resolved
configurations (every model x seed x value of every swept key; several swept keys give their product)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from organseg.errors import ConfigError
from organseg.models import is_builtin, is_external, list_models, model_name_problem
from organseg.study.comparison import Comparison
from organseg.training.config import (
    apply_overrides,
    list_presets,
    load_config,
    parse_override,
    resolve_config,
)
from organseg.values import SEED, check_value

DEFAULT_SEED = 1234  # the reference recipe's seed
# Keys that never make a sweep: the grid's own axes (nor do the runtime keys: where and how fast a run ran).
NOT_SWEPT = {"model.name", "train.seed", "data.fold"}
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def split_values(raw: str) -> list[str]:
    """``"0.01,0.05"`` -> ``["0.01", "0.05"]``; commas inside brackets or quotes belong to one value, so
    ``"[1,2,3,4],[2,4,8,16]"`` is two lists."""
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, None
    for ch in raw:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


@dataclass(frozen=True)
class Sweep:
    """``--set`` items split into fixed overrides (one value) and swept keys (several values, raw text)."""

    fixed: tuple[str, ...] = ()
    swept: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.swept]


def parse_sets(items: Sequence[str]) -> Sweep:
    """Parse ``--set key=v1[,v2,...]`` items; raises ConfigError naming the bad item."""
    fixed, swept, seen = [], [], set()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set {item!r}: expected key=value or key=v1,v2,..., e.g. train.base_lr=0.01,0.05"
            )
        if key in NOT_SWEPT:
            flag = {"model.name": "--models", "train.seed": "--seeds", "data.fold": "--folds"}[key]
            raise ConfigError(f"--set {item!r}: use {flag} for {key}")
        if key in seen:
            raise ConfigError(f"--set {item!r}: {key} is set twice; give all its values in one --set")
        seen.add(key)
        values = split_values(raw)
        if any(v == "" for v in values):
            raise ConfigError(f"--set {item!r}: an empty value (stray comma?)")
        parsed = [parse_override(f"{key}={v}")[1] for v in values]
        if len({json.dumps(p, sort_keys=True, default=str) for p in parsed}) != len(parsed):
            raise ConfigError(f"--set {item!r}: a value is repeated")
        if len(values) == 1:
            fixed.append(f"{key}={values[0]}")
        else:
            swept.append((key, tuple(values)))
    return Sweep(tuple(fixed), tuple(swept))


def parse_seeds(items: Sequence[str] | None) -> list[int]:
    """``["1234,1", "2"]`` -> ``[1234, 1, 2]``; default the reference seed."""
    if not items:
        return [DEFAULT_SEED]
    seeds: list[int] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            seeds.append(check_value("--seeds", part, SEED))
    if not seeds:
        raise ConfigError("--seeds: no seed given")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: a seed is repeated ({seeds})")
    return seeds


def freeze(value: Any) -> str:
    """A hashable, order-independent text of a value (swept values as group keys)."""
    return json.dumps(value, sort_keys=True, default=str)


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The last part of each swept key (``base_lr``), unless two keys share it (then the whole key)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k.replace(".", "-")) for k, s in zip(keys, last, strict=True)}


def safe_name(text: str) -> str:
    return _SAFE.sub("-", text).strip("-") or "x"


def run_name(model: str, seed: int, sweep: Sequence[tuple[str, str]] = (), fold: int | None = None) -> str:
    """The run folder name: ``swin_unet__seed1234__base_lr0.05`` (sweep = (key, raw value) pairs), with
    ``_fold<k>`` after it for a cross-validation fold."""
    short = short_keys([k for k, _ in sweep])
    # safe_name: a network of one's own may be an import path (mypkg.nets:build_mynet), not a folder name
    name = "__".join([safe_name(model), f"seed{seed}", *(f"{short[k]}{safe_name(v)}" for k, v in sweep)])
    return name if fold is None else f"{name}_fold{fold}"


def preset_for(template: str | None, model: str, kind: str | None) -> str:
    """The preset (name or YAML path) of ``model``: ``template`` with ``{model}`` filled in, or the network's
    preset for the dataset (``unet_acdc``); datasets that are neither Synapse nor ACDC get the Synapse
    recipe."""
    if template is None:
        if not is_builtin(model):
            raise ConfigError(
                f"--models {model}: a network of one's own has no preset of its own; name the recipe it "
                "trains with: --preset unet_synapse (or a YAML file; see docs/networks.md)"
            )
        name = f"{model}_{kind or 'synapse'}"
        if name not in list_presets() and f"{name}_fast" in list_presets():
            # the networks of the field have no published recipe to reproduce, only the fast one; mixing it
            # with the other networks' reference recipes would compare recipes, not networks
            raise ConfigError(
                f"--models {model}: no reference preset ({name}), only {name}_fast; compare every network "
                f'with its fast recipe: --preset "{{model}}_{kind or "synapse"}_fast"'
            )
        return name
    try:
        return template.format(model=model)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"--preset {template!r}: only {{model}} may be filled in ({exc})") from None


@dataclass(frozen=True)
class PlannedRun:
    """One grid point: its folder name, network, seed, swept values (raw text) and resolved configuration."""

    name: str
    model: str
    seed: int
    sweep: tuple[tuple[str, str], ...]
    config: dict = field(compare=False, hash=False)
    fold: int | None = None


def plan_runs(
    models: Sequence[str],
    seeds: Sequence[int],
    sets: Sweep,
    *,
    preset: str | None = None,
    kind: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    data_root: str | Path | None = None,
    folds: int | None = None,
) -> list[PlannedRun]:
    """Expand the grid (model-major, then swept values, then seeds, then ``folds`` cross-validation folds)
    into resolved configurations."""
    if not models:
        raise ConfigError("--models: name at least one network")
    unknown = [m for m in models if model_name_problem(m) is not None]
    if unknown:
        if is_external(unknown[0]):  # an import path or entry point that does not load: say why
            raise ConfigError(f"--models: {model_name_problem(unknown[0])}")
        raise ConfigError(f"--models: unknown network(s) {unknown}; available: {', '.join(list_models())}")
    if len(set(models)) != len(models):
        raise ConfigError(f"--models: a network is repeated ({list(models)})")
    plans = []
    for model in models:
        name = preset_for(preset, model, kind)
        base = load_config(name)
        preset_model = (base.get("model") or {}).get("name")
        if preset_model not in (None, model):
            if (base.get("model") or {}).get("args"):
                raise ConfigError(
                    f"preset {name!r} sets model.args for {preset_model!r}, not {model!r}: "
                    "use a preset template with {model} (e.g. --preset '{model}_synapse')"
                )
            base = {**base, "model": {**base["model"], "name": model, "args": {}}}
        for values in itertools.product(*(vals for _, vals in sets.swept)):
            sweep = tuple(zip(sets.keys, values, strict=True))
            for seed, fold in itertools.product(seeds, range(folds) if folds else [None]):
                items = [
                    *sets.fixed,
                    *(f"{k}={v}" for k, v in sweep),
                    f"model.name={model}",
                    f"train.seed={seed}",
                ]
                if precision:
                    items.append(f"train.precision={precision}")
                if device:
                    items.append(f"train.device={device}")
                if fold is not None:
                    items += [f"data.fold={fold}", f"data.folds={folds}"]
                raw = apply_overrides(base, items)
                cfg = resolve_config(raw, data_root)
                name = run_name(model, seed, sweep, fold)
                plans.append(PlannedRun(name, model, seed, sweep, cfg, fold))
    names = [p.name for p in plans]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(
            f"two grid points get the same run folder name ({clash[0]}); make the --set values distinct"
        )
    return plans


def evaluated_on(c: Comparison) -> str:
    """What a comparison's numbers are on, for titles: ``test split``, or ``5-fold cross-validation
    (out-of-fold)`` for a study whose folds were pooled."""
    cv = c.get("cross_validation")
    return f"{cv['folds']}-fold cross-validation (out-of-fold)" if cv else f"{c['split']} split"
