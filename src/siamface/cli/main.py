"""``siamface`` entry point: dispatch to command modules, turn every error into one line.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func``. Heavy imports (torch, timm) happen inside the command functions so that
``siamface --help`` answers instantly.

Exit status: 0 success; 1 only where a command documents a negative answer (``verify``:
different people); 2 any error, whatever raised it; 130 interrupted. User errors
(:class:`SiamfaceError`) print their message. Anything else is a bug or an environment
failure: it prints one line saying what happened and where the traceback was written
(``siamface --debug COMMAND`` prints the traceback instead), so a script can always tell a
crash (2) from a rejection (1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from siamface.errors import SiamfaceError
from siamface.fileio import describe_os_error
from siamface.version import __version__

#: Command names, in --help order; each lives in siamface.cli.<module> (see MODULES).
COMMANDS = [
    "train",
    "prepare",
    "data",
    "evaluate",
    "verify",
    "embed",
    "calibrate",
    "centre",
    "fuse",
    "pairs",
    "gallery",
    "identify",
    "evaluate-1n",
    "export",
    "import",
    "serve",
    "watch",
]
#: Commands whose module name is not the command name with '-' -> '_'.
MODULES = {"import": "import_pth"}

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
#: Setting this environment variable (to anything but 0) has the effect of --debug.
DEBUG_ENV = "SIAMFACE_DEBUG"


def module_name(command: str) -> str:
    return MODULES.get(command, command.replace("-", "_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siamface",
        description=(
            "Train, evaluate and ship face-verification models. Data flows: identity folders "
            "-> faces -> embeddings -> scores -> decisions. Run 'siamface COMMAND --help'."
        ),
        epilog="exit status: 0 ok; 1 verify: different people; 2 any error; 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"siamface {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print the full traceback of unexpected errors (or set {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"siamface.cli.{module_name(name)}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    debug = args.debug or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    prog = f"siamface {args.command}"
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("\nsiamface: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `siamface ... --json | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SiamfaceError as err:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED if type(err).__name__ == "TrainingInterrupted" else EXIT_USER_ERROR
    except Exception as err:  # noqa: BLE001 - the last line of defence: never a raw traceback
        print(f"{prog}: error: {describe_unexpected(err, debug)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(rc or 0)


def describe_unexpected(err: BaseException, debug: bool = False) -> str:
    """One line for an exception nobody anticipated, plus where its traceback went."""

    if isinstance(err, MemoryError):
        what = "out of memory (try a smaller --batch-size, fewer --workers or smaller images)"
    elif isinstance(err, OSError):
        name = f" ({err.filename})" if getattr(err, "filename", None) else ""
        what = f"{describe_os_error(err)}{name}"
    else:
        text = str(err).strip().splitlines()
        what = f"unexpected {type(err).__name__}" + (f": {text[0][:300]}" if text else "")
    if debug:
        traceback.print_exception(err, file=sys.stderr)
        return what
    where = _save_traceback(err)
    if where is None:
        return f"{what} (rerun with --debug for the traceback)"
    return f"{what} (traceback in {where}; please report it if the input looks fine)"


def _save_traceback(err: BaseException) -> str | None:
    import tempfile

    try:
        fd, path = tempfile.mkstemp(prefix="siamface-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"siamface {__version__}\nargv: {sys.argv!r}\n\n")
            traceback.print_exception(err, file=f)
    except OSError:  # the disk may be the very thing that is full
        return None
    return path


if __name__ == "__main__":
    sys.exit(main())
