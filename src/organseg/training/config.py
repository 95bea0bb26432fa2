"""Training configuration as plain data: presets (YAML), ``--set key=value`` overrides, validation.

A configuration is a nested dict with five sections (``model``, ``data``, ``train``, ``val``, ``checkpoint``).
Presets in ``organseg/configs/*.yaml`` only list what differs from :data:`DEFAULTS`; :func:`resolve_config`
merges, checks and returns the full dict that ``train`` prints, writes to ``RUN_DIR/config.yaml`` and
stores in every checkpoint.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from organseg.errors import ConfigError
from organseg.precision import PRECISIONS

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
    },
    "train": {
        "img_size": 224,
        "batch_size": 24,  # GLOBAL batch: split evenly over torchrun processes
        "base_lr": 0.05,  # for the global batch above
        "lr_scaling": "none",  # none | linear | swin_unet (see effective_lr)
        "reference_batch": 24,
        "max_epochs": 150,
        "max_iterations": None,  # if set, replaces max_epochs x iterations per epoch (poly horizon too)
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "ce_weight": 0.4,
        "dice_weight": 0.6,
        "seed": 1234,
        "deterministic": False,
        "precision": "fp32",  # fp32 | bf16 | fp16 (fp16: GPU only, with a grad scaler)
        "compile": False,
        "channels_last": "auto",  # auto: on for convolutional networks (U-Net)
        "augment": "batched",  # reference (per-sample SciPy) | batched (torch, whole batch) | none
        "num_workers": 0,  # DataLoader workers of the reference augmentation path
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "threads": None,  # torch intra-op threads; None leaves torch's choice
        "time_budget_min": None,  # stop (checkpointed, validated, resumable) after this many minutes
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
LR_SCALINGS = ("none", "linear", "swin_unet")

# Keys that may change when a run is resumed: they affect speed or logging, not the computation.
RUNTIME_KEYS = frozenset(
    {
        "data.root",
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
        cfg = _yaml_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
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
        raise ConfigError(f"--set {item!r}: cannot parse the value ({exc})") from None
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


def _merge(defaults: dict, given: dict, prefix: str = "") -> dict:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        name = f"{prefix}{key}"
        if key not in defaults:
            raise ConfigError(f"unknown configuration key {name!r}; known keys here: {', '.join(defaults)}")
        # model.args is free-form: it is passed to the model constructor as is.
        if isinstance(defaults[key], dict) and name != "model.args":
            if not isinstance(value, dict):
                raise ConfigError(f"configuration key {name!r} must be a section (mapping)")
            out[key] = _merge(defaults[key], value, f"{name}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def resolve_config(cfg: dict, data_root: str | Path | None = None) -> dict:
    """Merge with :data:`DEFAULTS`, fill ``data.root``, and check every value; raises ConfigError."""
    out = _merge(DEFAULTS, cfg or {})
    if data_root is not None:
        out["data"]["root"] = str(data_root)
    t, v = out["train"], out["val"]
    _require(isinstance(out["model"]["name"], str), "model.name must be a model name, e.g. swin_unet or unet")
    _require(isinstance(out["model"]["args"], dict), "model.args must be a mapping of constructor arguments")
    _require(
        "num_classes" not in out["model"]["args"], "model.args.num_classes is set from the dataset; remove it"
    )
    for key in ("img_size", "batch_size", "max_epochs", "reference_batch", "log_every"):
        _require(
            isinstance(t[key], int) and t[key] > 0, f"train.{key} must be a positive integer, got {t[key]!r}"
        )
    for key in ("base_lr", "momentum", "weight_decay", "poly_power", "ce_weight", "dice_weight"):
        _require(
            isinstance(t[key], (int, float)) and not isinstance(t[key], bool) and t[key] >= 0,
            f"train.{key} must be a non-negative number, got {t[key]!r}",
        )
    _require(t["base_lr"] > 0, "train.base_lr must be positive")
    _require(isinstance(t["seed"], int), f"train.seed must be an integer, got {t['seed']!r}")
    _require(
        t["precision"] in PRECISIONS,
        f"train.precision must be one of {', '.join(PRECISIONS)}, got {t['precision']!r}",
    )
    _require(
        t["augment"] in AUGMENTS, f"train.augment must be one of {', '.join(AUGMENTS)}, got {t['augment']!r}"
    )
    _require(
        t["lr_scaling"] in LR_SCALINGS,
        f"train.lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {t['lr_scaling']!r}",
    )
    _require(t["channels_last"] in ("auto", True, False), "train.channels_last must be auto, true or false")
    _require(
        isinstance(t["num_workers"], int) and t["num_workers"] >= 0,
        "train.num_workers must be an integer >= 0",
    )
    _require(
        t["threads"] is None or (isinstance(t["threads"], int) and t["threads"] > 0),
        "train.threads must be >= 1",
    )
    _require(
        t["max_iterations"] is None or (isinstance(t["max_iterations"], int) and t["max_iterations"] > 0),
        "train.max_iterations must be a positive integer or null",
    )
    budget = t["time_budget_min"]
    _require(
        budget is None or (isinstance(budget, (int, float)) and budget > 0),
        "train.time_budget_min must be > 0 minutes",
    )
    _require(
        isinstance(v["every"], int) and v["every"] >= 0,
        "val.every must be an integer >= 0 (0: last epoch only)",
    )
    _require(
        isinstance(v["batch_size"], int) and v["batch_size"] > 0, "val.batch_size must be a positive integer"
    )
    for section, key in (("data", "max_train_slices"), ("val", "max_cases")):
        value = out[section][key]
        _require(
            value is None or (isinstance(value, int) and value > 0),
            f"{section}.{key} must be a positive integer",
        )
    interval = out["checkpoint"]["save_interval"]
    _require(
        isinstance(interval, int) and interval > 0, "checkpoint.save_interval must be a positive integer"
    )
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


def config_differences(old: dict, new: dict, ignore: frozenset[str] = RUNTIME_KEYS) -> list[str]:
    """Human-readable ``key: old -> new`` lines for the keys that differ (ignoring runtime keys)."""
    a, b = flatten(old), flatten(new)
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in ignore and a.get(k) != b.get(k)
    ]


def to_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
