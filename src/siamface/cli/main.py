"""``siamface`` entry point: dispatch to command modules, turn user errors into messages.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func``. Heavy imports (torch, timm) happen inside the command functions so that
``siamface --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from siamface import __version__
from siamface.errors import SiamfaceError

#: Command modules under siamface.cli, in --help order.
COMMANDS = [
    "train",
    "prepare",
    "evaluate",
    "verify",
    "embed",
    "calibrate",
    "pairs",
    "gallery",
    "identify",
    "evaluate-1n",
    "export",
    "serve",
]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siamface",
        description=(
            "Train, evaluate and ship face-verification models. Data flows: identity folders "
            "-> faces -> embeddings -> scores -> decisions. Run 'siamface COMMAND --help'."
        ),
    )
    parser.add_argument("--version", action="version", version=f"siamface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"siamface.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("\nsiamface: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `siamface ... --json | head`: the reader left; that is not an error of ours.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SiamfaceError as err:
        print(f"siamface {args.command}: error: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED if type(err).__name__ == "TrainingInterrupted" else EXIT_USER_ERROR
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
