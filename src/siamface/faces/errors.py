"""Failures of the face layer, typed so that batch code can decide what is fatal.

A photo without a detectable face is a property of that one file, like a truncated JPEG, so
:class:`NoFaceError` is an :class:`~siamface.folders.images.ImageLoadError`: embedding, training
and ``prepare`` skip and report it. A missing detector package is an environment problem that
affects every image, so :class:`DetectorUnavailable` is a user-facing
:class:`~siamface.errors.SiamfaceError` that stops the command with an install hint.
"""

from __future__ import annotations

from siamface.errors import SiamfaceError
from siamface.folders.images import ImageLoadError


class NoFaceError(ImageLoadError):
    """No face (above the detector's score threshold) was found in an image."""


class DetectorUnavailable(SiamfaceError):
    """The requested face detector is unknown or its package is not installed."""


class AmbiguousFaceError(NoFaceError):
    """Several faces, and two of them equally likely to be the person the photo is about.

    A :class:`NoFaceError` (so an ``ImageLoadError``): batch code that must not guess
    (training, enrolment) skips and lists the photo; interactive commands show the faces and
    ask which one (``--face``). ``choice`` holds every face found.
    """

    def __init__(self, message: str, choice=None) -> None:
        super().__init__(message if message.startswith(AMBIGUOUS) else AMBIGUOUS + message)
        self.choice = choice


#: How every ambiguous-face reason starts, so batch reports (which keep reasons as text) can
#: list these photos apart from unreadable ones.
AMBIGUOUS = "ambiguous face: "


def is_ambiguous(reason: str) -> bool:
    """Whether a skipped photo's reason is :class:`AmbiguousFaceError`'s."""
    return reason.startswith(AMBIGUOUS)
