"""The face of one photo for a command that takes photos: chosen, reported, or refused.

A command that takes a photo must say when the photo held several faces ("3 faces found, used
face 0 at (x0, y0, x1, y1)"), and must refuse, naming every face, when two are equally likely
to be the person, rather than answer confidently about the wrong one. ``--face N`` (a number
from that list) or ``--face x0,y0,x1,y1`` settles it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from siamface.errors import SiamfaceError
from siamface.faces.choose import FacePick
from siamface.faces.errors import AmbiguousFaceError
from siamface.folders.images import ImageLoadError, load_rgb


def add_face_arg(
    p: argparse.ArgumentParser, flag: str = "--face", which: str = "the photo"
) -> None:
    p.add_argument(
        flag,
        metavar="N|BOX",
        help=f"which face of {which} to use when it holds several: a number from the list "
        "printed (0 = largest) or a box x0,y0,x1,y1 in the photo's pixels (default: the face "
        "the photo is about; a photo with two equally likely faces is refused)",
    )


def face_of(model, path: Path, pick: str | None, flag: str = "--face", quiet: bool = False):
    """(HWC face crop, detection record or None) of the photo at ``path``.

    Prints a note to stderr when the photo held several faces (unless ``quiet``); raises
    :class:`SiamfaceError` naming every face when the choice is ambiguous and not settled
    by ``pick``, and for unreadable photos or photos without a face.
    """

    try:
        chosen = FacePick.parse(pick)
    except SiamfaceError as err:
        raise SiamfaceError(str(err).replace("--face", flag)) from err
    try:
        found = model.locate(load_rgb(path), pick=chosen, ambiguous="refuse")
    except AmbiguousFaceError as err:
        listed = ""
        if err.choice is not None:
            listed = "; faces: " + ", ".join(
                f"{i}: ({', '.join(str(round(v)) for v in f.box)}) score {f.score:.2f}"
                for i, f in enumerate(err.choice.faces)
                if i not in err.choice.merged
            )
            raise SiamfaceError(f"{path}: {err.choice.ambiguity(flag)}{listed}") from err
        raise SiamfaceError(f"{path}: {err}") from err
    except ImageLoadError as err:
        raise SiamfaceError(f"cannot read {path}: {err}") from err
    except SiamfaceError as err:  # a pick that names no face found
        raise SiamfaceError(f"{path}: {str(err).replace('--face', flag)}") from err
    choice = found.choice
    if choice is not None and (choice.several or choice.picked) and not quiet:
        print(f"{path}: {choice.describe()}", file=sys.stderr)
    record = None
    if choice is not None:
        record = {"image": str(path), **choice.to_dict(), "note": choice.describe()}
    return np.ascontiguousarray(found.crop), record
