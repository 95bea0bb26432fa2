"""``organseg phantom --out DIR --cases N``: synthetic abdominal CT in the raw BTCV layout (SYNTHETIC
DATA)."""

from __future__ import annotations

import argparse

from organseg.values import POSITIVE_INT, SEED, option

#: the verb's line in ``organseg --help``
HELP = "write synthetic abdominal CT cases (raw BTCV layout) to try the pipeline without data"


def add_parser(subparsers) -> argparse.ArgumentParser:
    # Imported here, not above: ``organseg --help`` imports every verb module and builds only the verb named
    # (organseg.cli.main); the phantom generator needs torch, seconds to load.
    from organseg.data.phantom import MAX_SIZE, SIZE_RULE, SLICES_RULE

    parser = subparsers.add_parser(
        "phantom",
        help=HELP,
        description="Write SYNTHETIC abdominal CT phantoms (HU, BTCV label ids, realistic spacing) as "
        "img/imgNNNN.nii.gz + label/labelNNNN.nii.gz, with SYNTHETIC.txt and phantom.json. Not patient data. "
        "--out must be a new or empty folder (or use --overwrite). "
        "Next step: organseg prepare synapse --raw DIR --out DIR2.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--cases", type=option(POSITIVE_INT), required=True, help="number of cases (ids 1..N)"
    )
    parser.add_argument(
        "--size",
        type=option(SIZE_RULE),
        default=512,
        help=f"in-plane matrix size, 32 to {MAX_SIZE} (default %(default)s; 128 is fast)",
    )
    parser.add_argument(
        "--slices",
        type=option(SLICES_RULE),
        default=None,
        help="slices per case (default: realistic 2.5-5 mm spacing, about 50-110 slices)",
    )
    parser.add_argument(
        "--seed", type=option(SEED), default=0, help="seed (default %(default)s); same seed, same data"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier phantom set in --out (deletes only the files phantom writes; any other "
        "file there stops it with nothing deleted)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    from organseg.data.phantom import write_phantom_set

    # write_phantom_set checks the counts, the memory one case needs and the output folder before writing.
    paths = write_phantom_set(
        args.out,
        args.cases,
        args.size,
        args.seed,
        num_slices=args.slices,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(paths)} SYNTHETIC case(s) to {args.out} (img/, label/, SYNTHETIC.txt, phantom.json)")
    return 0
