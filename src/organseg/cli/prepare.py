"""``organseg prepare synapse --raw DIR --out DIR``: raw BTCV release -> TransUNet Synapse format."""

from __future__ import annotations

import argparse
import json
import logging

from organseg.values import FINITE, SEED, Rule, option

TEST_FRACTION = Rule("float", lo=0, hi=1, hi_open=True)


#: the verb's line in ``organseg --help``
HELP = "convert raw data to a training layout (synapse: BTCV img/, label/ -> train_npz/, test_vol_h5/)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    # Imported here, not above: ``organseg --help`` imports every verb module and builds only the verb named
    # (organseg.cli.main), so a verb's own dependencies load when it is the one run.
    from organseg.data.prepare import DEFAULT_TEST_FRACTION, WORKERS_RULE
    from organseg.data.preprocess import SYNAPSE_WINDOW

    parser = subparsers.add_parser(
        "prepare",
        help=HELP,
        description="Convert raw data to a training layout. nnU-Net v2 raw folders and the SSL4MIS ACDC "
        "folder are read directly and need no preparation.",
    )
    sub = parser.add_subparsers(dest="source", metavar="SOURCE")
    sub.required = True
    syn = sub.add_parser(
        "synapse",
        help="BTCV release (img/imgNNNN.nii.gz, label/labelNNNN.nii.gz) -> TransUNet Synapse format",
        description="Clip HU to the window, scale to [0, 1], map the 13 BTCV ids to the 9 Synapse classes, "
        "write training slices (train_npz/) and test volumes (test_vol_h5/), the lists and a sidecar with "
        "each case's spacing. Default split: the reference 18/12 when all 30 reference ids are present, else "
        "a seeded automatic split (with a warning). Re-running into the same --out continues: finished cases "
        "are skipped.",
    )
    syn.add_argument("--raw", required=True, help="raw BTCV folder (holding img/ and label/)")
    syn.add_argument("--out", required=True, help="output folder (the Synapse root)")
    syn.add_argument(
        "--train-cases", nargs="+", metavar="ID", help="training case ids (e.g. 5 6 7 or case0005)"
    )
    syn.add_argument("--test-cases", nargs="+", metavar="ID", help="test case ids")
    syn.add_argument("--val-cases", nargs="+", metavar="ID", help="training case ids to list in val.txt")
    syn.add_argument(
        "--test-fraction",
        type=option(TEST_FRACTION),
        default=DEFAULT_TEST_FRACTION,
        help="automatic split: share of cases for test (default %(default)s, the reference 12/30)",
    )
    syn.add_argument(
        "--split-seed", type=option(SEED), default=1234, help="automatic split seed (default %(default)s)"
    )
    syn.add_argument(
        "--window",
        type=option(FINITE),
        nargs=2,
        default=list(SYNAPSE_WINDOW),
        metavar=("LO", "HI"),
        help="HU window (default %(default)s, the reference)",
    )
    syn.add_argument(
        "--unknown-labels",
        choices=("error", "background"),
        default="error",
        help="label ids outside BTCV 0..13: stop with an error (default) or map to background with a warning",
    )
    syn.add_argument(
        "--compress", action="store_true", help="compress the .npz/.h5 files (smaller, slower to load)"
    )
    syn.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier prepare output in --out (of any raw folder; deletes only prepare's own "
        "files, and nothing if the folder holds anything else). Without it --out must be new, empty, or an "
        "earlier prepare of the same --raw, which is continued",
    )
    syn.add_argument(
        "--workers",
        type=option(WORKERS_RULE),
        default=None,
        metavar="N",
        help="processes reading and converting cases at once (default: the cores this process may use; "
        "fewer when memory is short). The files written are the same whatever N",
    )
    syn.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    from organseg.data.prepare import prepare_synapse

    logging.basicConfig(level=logging.WARNING, format="organseg prepare: warning: %(message)s")
    summary = prepare_synapse(
        args.raw,
        args.out,
        train_cases=args.train_cases,
        test_cases=args.test_cases,
        val_cases=args.val_cases,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        window=args.window,
        unknown_labels=args.unknown_labels,
        compress=args.compress,
        progress=not args.quiet,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    print(json.dumps(summary, indent=1))
    return 0
