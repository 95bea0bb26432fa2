"""Training configuration as plain data: presets (YAML), ``--set key=value`` overrides, validation.

A configuration is a nested dict with five sections (``model``, ``data``, ``train``, ``val``, ``checkpoint``).
Presets in ``organseg/configs/*.yaml`` only list what differs from :data:`DEFAULTS`; :func:`resolve_config`
merges, checks and returns the full dict that ``train`` prints, writes to ``RUN_DIR/config.yaml`` and
stores in every checkpoint. :func:`model_args` and :func:`check_network` read the network a configuration
builds (its constructor arguments, and whether it takes ``train.img_size``) without building it.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from organseg.errors import ConfigError, DataError
from organseg.fileio import read_yaml, yaml_problem
from organseg.models import (
    check_contract,
    check_input_size,
    check_model_args,
    check_model_name,
    is_builtin,
    takes_image_size,
)
from organseg.precision import PRECISIONS
from organseg.values import OPTIONAL_POSITIVE_INT, POSITIVE_INT, SEED, Rule, check_value, max_threads

# The reference recipe (Swin-Unet @f998666, protocol spec section 2); presets override the model and batch.
DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "swin_unet",
        "args": {},  # constructor overrides; num_classes always comes from the dataset
        "pretrained": None,  # weights loaded at a fresh start (organseg.models.pretrained.load_pretrained)
    },
    "data": {
        "root": None,
        "max_train_slices": None,  # first N training slices only: smoke tests and demos
        "in_memory": "auto",  # hold the training slices in memory; auto: when they fit (training.data)
        "train_fraction": None,  # a seeded subset of the training cases (patients), nested across fractions
        "subset_seed": 0,  # which cases a fraction keeps: the same for every network and train.seed
        "subjects": None,  # case -> subject (patient): a regex (first group) or a .json map; None: layout's
        "fold": None,  # cross-validation fold: train on the other folds' subjects, validate on this one's
        "folds": 5,
        "fold_seed": 12345,  # which subjects each fold holds out (nnU-Net's splits_final.json wins)
    },
    "train": {
        "img_size": 224,
        "batch_size": 24,  # GLOBAL batch: split evenly over torchrun processes
        "base_lr": 0.05,  # for the global batch above
        "lr_scaling": "none",  # none | linear | swin_unet (see effective_lr)
        "reference_batch": 24,
        "max_epochs": 150,
        "max_iterations": None,  # if set, replaces max_epochs x iterations per epoch (poly horizon too)
        "budget_images": None,  # if set, iterations = ceil(budget_images / batch_size) (equal images seen)
        "optimizer": "sgd",  # sgd (the reference) | adamw
        "momentum": 0.9,  # SGD only
        "weight_decay": 1e-4,
        "schedule": "poly",  # poly (the reference) | cosine
        "poly_power": 0.9,
        "warmup_iterations": 0,  # linear warm-up from base_lr / warmup_iterations to base_lr
        "ce_weight": 0.4,
        "dice_weight": 0.6,
        "seed": 1234,
        "deterministic": False,
        "precision": "fp32",  # fp32 | bf16 | fp16 (fp16: GPU only, with a grad scaler)
        "compile": False,
        "channels_last": "auto",  # auto: the network's own preference (models.layout; on for the U-Net)
        "augment": "batched",  # reference (per-sample SciPy) | batched (torch, whole batch) | none
        "num_workers": 0,  # DataLoader workers of the reference augmentation path
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "threads": None,  # torch intra-op threads; None leaves torch's choice
        "time_budget_min": None,  # stop (checkpointed, validated, resumable) after this many minutes; without
        # max_iterations / budget_images it also fits the schedule's horizon to the budget (fitted_iterations)
        "fitted_iterations": None,  # written by train: the horizon fitted to time_budget_min (kept on resume)
        "log_every": 1,  # iterations between metrics.jsonl records
        "progress": True,
    },
    "val": {
        "every": 10,  # epochs; the last epoch is always validated
        "batch_size": 24,  # slices per forward pass
        "max_cases": None,
    },
    "checkpoint": {
        "save_interval": 50,  # epoch_N.pt when N > max_epochs // 2 and (N + 1) % save_interval == 0
    },
}

AUGMENTS = ("reference", "batched", "none")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine")
LR_SCALINGS = ("none", "linear", "swin_unet")

# Keys that may change when a run is resumed: they affect speed or logging, not the computation.
RUNTIME_KEYS = frozenset(
    {
        "data.root",
        "data.in_memory",
        "train.num_workers",
        "train.device",
        "train.threads",
        "train.time_budget_min",
        "train.log_every",
        "train.progress",
        "train.compile",
        "val.batch_size",
        "val.every",
        "val.max_cases",
    }
)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; accept the YAML 1.2 / Python float forms too."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def presets_dir() -> Path:
    return Path(str(resources.files("organseg") / "configs"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def load_config(preset_or_path: str | Path) -> dict:
    """Read a preset by name (``swin_unet_synapse``) or any YAML file; returns the raw (unresolved) dict."""
    path = Path(preset_or_path)
    if not path.suffix and not path.exists():
        path = presets_dir() / f"{preset_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {str(preset_or_path)!r}; presets: {', '.join(list_presets())}")
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        cfg = read_yaml(path, "configuration file", loader=_yaml_load)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    if cfg is None:
        raise ConfigError(f"{path}: empty configuration file (give a preset name, or keys to change)")
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(cfg).__name__}")
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.base_lr=0.01"`` -> (["train", "base_lr"], 0.01); the value is read as a YAML scalar."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.base_lr=0.01")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: cannot parse the value as YAML ({yaml_problem(exc)})") from None
    return key.strip().split("."), value


def apply_overrides(cfg: dict, items: list[str] | tuple[str, ...]) -> dict:
    """A copy of ``cfg`` with every ``key=value`` applied; ``resolve_config`` catches unknown keys."""
    cfg = copy.deepcopy(cfg)
    for item in items:
        keys, value = parse_override(item)
        node = cfg
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return cfg


def merge_config(defaults: dict, given: dict, prefix: str = "") -> dict:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        name = f"{prefix}{key}"
        if key not in defaults:
            raise ConfigError(f"unknown configuration key {name!r}; known keys here: {', '.join(defaults)}")
        # model.args is free-form: it is passed to the model constructor as is.
        if isinstance(defaults[key], dict) and name != "model.args":
            if not isinstance(value, dict):
                raise ConfigError(f"configuration key {name!r} must be a section (mapping)")
            out[key] = merge_config(defaults[key], value, f"{name}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


# ------------------------------------------------------------------------------------------ value schema


# Every leaf of DEFAULTS and what it accepts (model.args is free-form: the network constructor checks it).
SCHEMA: dict[str, Rule] = {
    "model.name": Rule("str"),
    "model.args": Rule("mapping"),
    "model.pretrained": Rule("str", optional=True),
    "data.root": Rule("str", optional=True),
    "data.max_train_slices": OPTIONAL_POSITIVE_INT,
    "data.in_memory": Rule("choice", choices=("auto", True, False)),
    "data.train_fraction": Rule("float", lo=0, hi=1, lo_open=True, optional=True, why="of the cases"),
    "data.subset_seed": SEED,
    "data.subjects": Rule("str", optional=True),
    "data.fold": Rule("int", lo=0, optional=True, why="a fold index, 0 .. data.folds - 1"),
    "data.folds": Rule("int", lo=2, hi=100, why="folds of the training subjects"),
    "data.fold_seed": SEED,
    "train.img_size": Rule("int", lo=1, hi=4096, why="the network input side in pixels"),
    "train.batch_size": POSITIVE_INT,
    "train.base_lr": Rule("float", lo=0, lo_open=True),
    "train.lr_scaling": Rule("choice", choices=LR_SCALINGS),
    "train.reference_batch": POSITIVE_INT,
    "train.max_epochs": POSITIVE_INT,
    "train.max_iterations": OPTIONAL_POSITIVE_INT,
    "train.optimizer": Rule("choice", choices=OPTIMIZERS),
    "train.momentum": Rule("float", lo=0, hi=1, hi_open=True),
    "train.weight_decay": Rule("float", lo=0),
    "train.schedule": Rule("choice", choices=SCHEDULES),
    "train.poly_power": Rule("float", lo=0, lo_open=True),
    "train.warmup_iterations": Rule("int", lo=0, why="iterations"),
    "train.ce_weight": Rule("float", lo=0),
    "train.dice_weight": Rule("float", lo=0),
    "train.seed": SEED,
    "train.deterministic": Rule("bool"),
    "train.precision": Rule("choice", choices=PRECISIONS),
    "train.compile": Rule("bool"),
    "train.channels_last": Rule("choice", choices=("auto", True, False)),
    "train.augment": Rule("choice", choices=AUGMENTS),
    "train.num_workers": Rule("int", lo=0, hi=max_threads, why="4 x the CPU cores here"),
    "train.device": Rule("device"),
    "train.threads": Rule(
        "int", lo=1, hi=max_threads, optional=True, why="4 x the CPU cores here; null: torch decides"
    ),
    "train.time_budget_min": Rule("float", lo=0, lo_open=True, optional=True),
    "train.budget_images": Rule("int", lo=1, optional=True, why="training images seen, all processes"),
    "train.fitted_iterations": Rule("int", lo=1, optional=True, why="written by train; leave it null"),
    "train.log_every": POSITIVE_INT,
    "train.progress": Rule("bool"),
    "val.every": Rule("int", lo=0, why="epochs; 0: the last epoch only"),
    "val.batch_size": POSITIVE_INT,
    "val.max_cases": OPTIONAL_POSITIVE_INT,
    "checkpoint.save_interval": POSITIVE_INT,
}


def resolve_config(cfg: dict, data_root: str | Path | None = None) -> dict:
    """Merge with :data:`DEFAULTS`, fill ``data.root``, and check every value against :data:`SCHEMA`;
    raises ConfigError naming the key. Exact conversions are recorded ("1e-3" is stored as 0.001)."""
    out = merge_config(DEFAULTS, cfg or {})
    if data_root is not None:
        out["data"]["root"] = str(data_root)
    if isinstance(out["data"]["root"], Path):
        out["data"]["root"] = str(out["data"]["root"])
    for name, rule in SCHEMA.items():
        section, key = name.split(".")
        out[section][key] = check_value(name, out[section][key], rule)
    if "num_classes" in out["model"]["args"]:
        raise ConfigError("model.args.num_classes is set from the dataset; remove it")
    t = out["train"]
    if t["budget_images"] is not None and t["max_iterations"] is not None:
        raise ConfigError(
            "train.budget_images and train.max_iterations both set the length of the run; set one of them"
        )
    set_length = t["budget_images"] is not None or t["max_iterations"] is not None
    if t["fitted_iterations"] is not None and set_length:
        raise ConfigError(
            "train.fitted_iterations is the horizon train fits to train.time_budget_min; it cannot be set "
            "beside train.max_iterations or train.budget_images"
        )
    d = out["data"]
    if d["fold"] is not None and d["fold"] >= d["folds"]:
        raise ConfigError(f"data.fold={d['fold']} must be in 0..{d['folds'] - 1} (data.folds={d['folds']})")
    if t["ce_weight"] + t["dice_weight"] <= 0:
        raise ConfigError("train.ce_weight and train.dice_weight are both 0: the loss would be constant")
    return out


def effective_lr(train_cfg: dict) -> float:
    """The base learning rate for the configured global batch.

    ``none``: ``base_lr`` as given. ``linear``: ``base_lr * batch_size / reference_batch``.
    ``swin_unet``: the official Swin-Unet ``train.py`` rule, linear only when ``batch_size != 24`` and
    ``batch_size % 6 == 0`` (batch 12 from 0.05 gives 0.025; batch 16 keeps 0.05).
    """
    base, batch, ref = float(train_cfg["base_lr"]), train_cfg["batch_size"], train_cfg["reference_batch"]
    rule = train_cfg["lr_scaling"]
    if rule == "linear" or (rule == "swin_unet" and batch != ref and batch % 6 == 0):
        return base * batch / ref
    return base


# ------------------------------------------------------------------------------ the network it builds


def model_args(cfg: dict, num_classes: int) -> dict[str, Any]:
    """Constructor arguments: ``model.args``, the dataset's class count and, for networks built for one input
    size (Swin-Unet), ``train.img_size`` unless ``model.args`` sets it."""
    m = cfg["model"]
    check_model_name(m["name"])
    args = {**m["args"], "num_classes": num_classes}
    if takes_image_size(m["name"]):
        args.setdefault("img_size", cfg["train"]["img_size"])
    return args


def check_network(cfg: dict) -> None:
    """The configured network exists and takes ``train.img_size`` inputs (one rule per network, from the
    registry): raised as a ConfigError naming the key and the nearest sizes that fit, before a run folder
    exists, instead of a ValueError from the first forward pass. A network of one's own (an import path or
    entry point) is also built and run once on a dummy input (``models.check_contract``)."""
    m, side = cfg["model"], cfg["train"]["img_size"]
    check_model_name(m["name"])
    check_model_args(m["name"], m["args"])
    given = m["args"].get("img_size")
    if given is not None and given not in (side, [side, side], (side, side)):
        raise ConfigError(
            f"model.args.img_size={given} but train.img_size={side}: the network is fed {side}x{side} "
            "slices; set train.img_size only"
        )
    check_input_size(m["name"], side, m["args"])
    if not is_builtin(m["name"]):  # a network of one's own: its factory and forward pass keep the contract
        args = {**m["args"], "img_size": side} if takes_image_size(m["name"]) else dict(m["args"])
        check_contract(m["name"], args, side)


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"seed": 1}}`` -> ``{"train.seed": 1}``; ``model.args`` stays one value."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "model.args":
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# Keys that train itself writes into a run's configuration: a configuration asking for the same run has them
# unset (train.fitted_iterations: the horizon fitted to train.time_budget_min, kept on resume).
TRAINER_KEYS = frozenset({"train.fitted_iterations"})
SAME_RUN_IGNORES = RUNTIME_KEYS | TRAINER_KEYS


def config_differences(old: dict, new: dict, ignore: frozenset[str] = SAME_RUN_IGNORES) -> list[str]:
    """Human-readable ``key: old -> new`` lines for the keys that differ (ignoring runtime keys and the ones
    train records). A key the old configuration does not have (a run from an earlier organseg) counts as its
    default there."""
    a, b, defaults = flatten(old), flatten(new), flatten(DEFAULTS)
    return [
        f"{k}: {a.get(k, defaults.get(k))!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in ignore and a.get(k, defaults.get(k)) != b.get(k, defaults.get(k))
    ]


def to_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
