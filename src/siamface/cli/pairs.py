"""``siamface pairs``: write or check LFW-format pairs files for the 10-fold protocol."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from siamface.cli._model_args import positive_int
from siamface.errors import SiamfaceError
from siamface.fileio import check_output_file
from siamface.scores.protocol import make_pairs, read_pairs, resolve_pairs, write_pairs

EPILOG = """\
examples:
  siamface pairs make faces/ --folds 10 --per-fold 300 --out pairs.txt
  siamface pairs check pairs.txt --data faces/
  siamface evaluate --model runs/pins --data faces/ --pairs pairs.txt

Folds are identity-disjoint (a person appears in one fold only, as in LFW), each holds
--per-fold same-person and --per-fold different-person pairs, no pair repeats, and the file
depends only on the folder contents and --seed. Image numbers are the LFW file number
(name_0004.jpg -> 4) or, for other file names, the 1-based position in sorted order.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pairs",
        help="make or check LFW-style pairs files (10-fold protocol)",
        description="Generate or validate LFW pairs.txt files for 'siamface evaluate --pairs'.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    act = p.add_subparsers(dest="action", metavar="ACTION")
    mk = act.add_parser("make", help="generate a pairs file from identity folders")
    mk.add_argument("data", metavar="DIR", help="identity folders DIR/<person>/<image>")
    mk.add_argument("--folds", type=positive_int, default=10, help="number of folds (10)")
    mk.add_argument(
        "--per-fold",
        type=positive_int,
        default=300,
        help="same-person pairs per fold, and as many different-person (300)",
    )
    mk.add_argument("--out", required=True, metavar="FILE", help="pairs file to write")
    mk.add_argument("--seed", type=int, default=0, help="random seed (0)")
    mk.add_argument("--json", action="store_true", help="print a JSON summary")
    mk.set_defaults(func=run_make)
    ck = act.add_parser("check", help="check that a pairs file parses and its images exist")
    ck.add_argument("pairs", metavar="FILE", help="pairs file")
    ck.add_argument("--data", required=True, metavar="DIR", help="image root")
    ck.add_argument("--json", action="store_true", help="print a JSON summary")
    ck.set_defaults(func=run_check)
    p.set_defaults(func=_no_action)


def _no_action(args: argparse.Namespace) -> int:

    raise SiamfaceError("say 'siamface pairs make ...' or 'siamface pairs check ...'")


def _summary(pf, path: Path) -> dict:
    people = {p.name_a for p in pf.pairs} | {p.name_b for p in pf.pairs}
    return {
        "pairs_file": str(path),
        "folds": pf.folds,
        "per_fold": pf.per_fold,
        "pairs": len(pf.pairs),
        "same": int(pf.labels.sum()),
        "different": int((~pf.labels).sum()),
        "identities": len(people),
    }


def run_make(args: argparse.Namespace) -> int:

    check_output_file(args.out, "pairs file")
    pf = make_pairs(args.data, args.folds, args.per_fold, args.seed)
    out = write_pairs(pf, args.out)
    s = _summary(pf, out)
    if args.json:
        print(json.dumps(s))
    else:
        print(
            f"{s['pairs']} pairs ({s['same']} same, {s['different']} different) in "
            f"{s['folds']} identity-disjoint folds over {s['identities']} people -> {out}"
        )
    return 0


def run_check(args: argparse.Namespace) -> int:

    path = Path(args.pairs)
    pf = read_pairs(path)
    files = resolve_pairs(pf, args.data, path)
    s = _summary(pf, path) | {"images": len({f for ab in files for f in ab})}
    if args.json:
        print(json.dumps(s))
    else:
        print(
            f"{path}: OK, {s['pairs']} pairs in {s['folds']} folds, {s['images']} distinct "
            f"images of {s['identities']} people found under {args.data}"
        )
    return 0
