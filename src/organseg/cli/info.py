"""``organseg info``: the registered networks side by side: size, cost per image, configuration; with
``--data DIR``, a dataset's splits in volumes and subjects."""

from __future__ import annotations

import argparse
import json

from organseg.errors import ConfigError, ExtraNotInstalledError
from organseg.formatting import num
from organseg.values import Rule, option

#: the verb's line in ``organseg --help``
HELP = "parameters, GFLOPs and configuration of the networks"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help=HELP,
        description="Parameters and forward GFLOPs per image (torch FlopCounterMode: a multiply-add is "
        "2 FLOPs, GMACs = GFLOPs / 2) of every registered network, beside the reference figures.",
    )
    p.add_argument("--models", nargs="+", metavar="NAME", help="networks to show (default: all registered)")
    p.add_argument(
        "--img-size", type=option(Rule("int", lo=16, hi=4096)), default=224, help="square input size (224)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="describe a dataset instead: layout, classes, each split's volumes and subjects (patients)",
    )
    p.add_argument(
        "--subjects",
        metavar="RULE",
        help="with --data: map cases to subjects as data.subjects does (a regex's first group, or a .json)",
    )
    return p


def dataset_rows(root: str, subjects: str | None = None) -> dict:
    """A dataset's description for ``organseg info --data``: layout, classes, and per split the number of
    volumes and of subjects (training slices count their volumes and subjects too)."""
    from organseg.data import open_dataset
    from organseg.data.folds import apply_data_config

    dataset = apply_data_config(open_dataset(root), {"subjects": subjects})
    splits = {}
    for split in ("train", "val", "test"):
        cases = dataset.case_ids(split)
        splits[split] = {"volumes": len(cases), "subjects": len({dataset.subject_of(c) for c in cases})}
    info = dataset.info()
    return {
        "root": str(root),
        "layout": info.get("layout", dataset.name),
        "classes": list(dataset.class_names),
        "train_slices": len(dataset.train_slices()),
        "splits": splits,
    }


def format_dataset(d: dict) -> str:
    lines = [
        f"{d['root']}: {d['layout']} layout, {len(d['classes'])} classes ({', '.join(d['classes'])}), "
        f"{d['train_slices']} training slices"
    ]
    for split, n in d["splits"].items():
        lines.append(f"  {split:<5} {n['volumes']:>5} volume(s) of {n['subjects']:>4} subject(s)")
    return "\n".join(lines)


def missing_row(name: str, img_size: int, why: str) -> dict:
    """The row of a network whose library (an optional extra) is not installed: no numbers, and what to
    install in the configuration column."""
    empty = dict.fromkeys(("params", "gflops", "gmacs", "ref_params", "ref_gflops"))
    return {"name": name, **empty, "img_size": img_size, "description": why, "config": {}, "missing": why}


def format_table(rows: list[dict]) -> str:
    """The human-readable table ``organseg info`` prints."""
    header = ["model", "params", "ref params", "GFLOPs", "ref GFLOPs", "GMACs", "configuration"]
    body = [
        [
            r["name"],
            num(r["params"], ","),
            num(r["ref_params"], ","),
            num(r["gflops"], ".2f"),
            num(r["ref_gflops"], ".1f"),
            num(r["gmacs"], ".2f"),
            r["description"],
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = {1, 2, 3, 4, 5}  # numbers right-aligned

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs).rstrip()

    size = rows[0]["img_size"] if rows else 224
    notes = [
        f"FLOPs per {size}x{size} image, batch 1, forward only; multiply-add = 2 FLOPs (GMACs = GFLOPs / 2).",
        "ref: parameter counts of the reference state dicts; GFLOPs of the reference implementations.",
    ]
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body), "", *notes])


def run(args: argparse.Namespace) -> int:
    if args.data is not None:
        d = dataset_rows(args.data, args.subjects)
        print(json.dumps(d, indent=2) if args.json else format_dataset(d))
        return 0
    if args.subjects is not None:
        raise ConfigError("--subjects maps a dataset's cases to subjects: give the dataset with --data")
    from organseg.models import (
        check_contract,
        check_input_size,
        check_model_name,
        is_builtin,
        list_models,
        takes_image_size,
    )
    from organseg.models.flops import model_profile

    names = args.models or list_models()
    for name in names:
        check_model_name(name, key="--models")
    if args.img_size < 16 or args.img_size % 16:
        raise ConfigError(f"--img-size must be a positive multiple of 16, got {args.img_size}")
    rows = []
    for name in names:
        if not is_builtin(name):  # a network of one's own: built and run once before it is counted
            check_input_size(name, args.img_size, key="--img-size")
            check_contract(
                name, {"img_size": args.img_size} if takes_image_size(name) else {}, args.img_size, "--models"
            )
        try:
            rows.append(model_profile(name, img_size=args.img_size))
        except ExtraNotInstalledError as exc:
            if args.models:  # asked for by name: say what to install
                raise
            rows.append(missing_row(name, args.img_size, str(exc)))
        except ValueError as exc:  # e.g. a Swin-Unet window grid that does not fit this size
            raise ConfigError(f"{name} at {args.img_size}x{args.img_size}: {exc}") from None
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0
