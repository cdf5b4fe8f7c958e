"""Which face a photo is about: one named policy, chosen on measurement, and a record of the
choice that every command and endpoint can report.

A photo with several people is the commonest way a face pipeline goes silently wrong: take
the neighbour leaning into the frame, or a low-confidence box spanning two faces, and a
verification says "different people" with full confidence. The rule here was chosen on the
sample data's group photos (celeba_wild, 150 photos with several faces whose subject is known
from the person's other photos; ``bench/pipeline_parity.py`` and docs/faces.md):

================  =======================================================
policy            subject found (of 150 group photos)
================  =======================================================
``largest``       144 (the old default)
``central``       135 (CelebA photos are not centred on their subject)
``score``         149 (OpenCV's own pipeline: the detector's first row)
``auto``          150, on a plateau: size power 0.25-1, centre weight 1-6,
                  score power 2-8 all give 150
================  =======================================================

``auto`` ranks the faces that remain after *merge suppression* (a box that contains a more
confident smaller face, or straddles two faces, is two faces seen as one, not a face) by their
prominence ``(size / largest size) ** 0.5 * exp(-3 * d ** 2) * score ** 4``, where ``d`` is
the distance of the box centre from the photo centre in units of the photo's width and
height. When the runner-up's prominence is at least :data:`AMBIGUOUS_RATIO` of the winner's,
the photo is *ambiguous*: two candidates of similar size, place and confidence. Interactive
commands then refuse and ask for ``--face``; training and enrolment leave such photos out
(a wrong face there is a wrong label); evaluation uses the winner and counts them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from siamface.errors import SiamfaceError
from siamface.faces.detect import Face

#: Named rules for several faces. ``all`` is for ``prepare`` (one crop per face); used where
#: one face is needed it means ``auto``.
FACE_POLICIES = ("auto", "largest", "central", "score", "all")
DEFAULT_FACE_POLICY = "auto"

#: ``auto``'s prominence: size ** P_SIZE * exp(-W_CENTRE * d**2) * score ** P_SCORE. The
#: middle of the plateau measured on celeba_wild's group photos (see the module docstring).
AUTO_SIZE_POWER = 0.5
AUTO_CENTRE_WEIGHT = 3.0
AUTO_SCORE_POWER = 4.0
#: A runner-up with at least this fraction of the winner's prominence makes the choice
#: ambiguous. On celeba_wild 1 of 155 group photos reaches 0.75 (0 reach 0.8).
AMBIGUOUS_RATIO = 0.75
#: ``central`` ignores faces smaller than this fraction of the largest (a speck far back).
CENTRAL_MIN_SIZE = 0.25


def _area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _inter(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    i = _inter(a, b)
    u = _area(a) + _area(b) - i
    return i / u if u > 0 else 0.0


def merged_faces(faces: Sequence[Face]) -> set[int]:
    """Indices of boxes that are two faces seen as one, not a face.

    A box is a merge when it holds most (60 %) of a smaller face (a tenth to 70 % of its area)
    that the detector is more sure of, or holds a good part (25 %) of two other faces at once.
    Such boxes are what a detector returns for two heads close together, usually with a lower
    score than either.
    """
    out: set[int] = set()
    for i, a in enumerate(faces):
        area_a = _area(a.box)
        if area_a <= 0:
            continue
        straddled = 0
        for j, b in enumerate(faces):
            if i == j:
                continue
            area_b = _area(b.box)
            if area_b <= 0:
                continue
            inside = _inter(a.box, b.box) / area_b
            if inside >= 0.6 and 0.1 * area_a <= area_b <= 0.7 * area_a and b.score > a.score:
                out.add(i)
                break
            if inside >= 0.25 and area_b <= area_a:
                straddled += 1
        if straddled >= 2:
            out.add(i)
    return out


def prominence(faces: Sequence[Face], image_size: tuple[int, int]) -> np.ndarray:
    """``auto``'s score of each face (higher: more likely what the photo is about)."""
    if not faces:
        return np.zeros(0)
    w, h = image_size
    biggest = max(f.size for f in faces) or 1.0
    out = []
    for f in faces:
        cx, cy = f.center
        d = math.hypot((cx - w / 2) / max(w, 1), (cy - h / 2) / max(h, 1))
        out.append(
            (f.size / biggest) ** AUTO_SIZE_POWER
            * math.exp(-AUTO_CENTRE_WEIGHT * d * d)
            * max(f.score, 0.0) ** AUTO_SCORE_POWER
        )
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class FacePick:
    """A person's choice of face in one photo: an index in the list of faces found (as
    reported, largest first) or a box in photo pixels (the detection overlapping it most)."""

    index: int | None = None
    box: tuple[float, float, float, float] | None = None

    @classmethod
    def parse(cls, text: str | int | FacePick | None) -> FacePick | None:
        """``"1"`` -> the second face; ``"120,40,260,210"`` -> the face at that box."""
        if text is None or isinstance(text, FacePick):
            return text
        if isinstance(text, int):
            if text < 0:
                raise SiamfaceError(f"face index must be >= 0, got {text}")
            return cls(index=text)
        s = str(text).strip()
        if not s:
            return None
        parts = [p.strip() for p in s.replace(" ", ",").split(",") if p.strip()]
        try:
            if len(parts) == 1:
                return cls.parse(int(parts[0]))
            if len(parts) == 4:
                x0, y0, x1, y1 = (float(p) for p in parts)
                if x1 <= x0 or y1 <= y0:
                    raise ValueError
                return cls(box=(x0, y0, x1, y1))
        except ValueError:
            pass
        raise SiamfaceError(
            f"--face takes a face number (0, 1, ... as listed) or a box x0,y0,x1,y1 in photo "
            f"pixels, got {s!r}"
        )

    def describe(self) -> str:
        if self.index is not None:
            return f"face {self.index}"
        return "the face at " + _box_text(self.box or (0, 0, 0, 0))


def _box_text(box: Sequence[float]) -> str:
    return "(" + ", ".join(str(round(float(v))) for v in box) + ")"


@dataclass(frozen=True)
class FaceChoice:
    """Every face found in one photo and which one is used, with why.

    ``faces`` are largest first (the numbering ``--face N`` refers to); ``index`` is the face
    used (None when there is none); ``ambiguous`` is True when ``auto`` saw two candidates of
    similar prominence (``rivals`` holds both, best first); ``merged`` lists boxes set aside
    as two faces seen as one.
    """

    faces: tuple[Face, ...]
    index: int | None
    policy: str
    ambiguous: bool = False
    rivals: tuple[int, ...] = ()
    merged: tuple[int, ...] = ()
    picked: bool = False  # chosen by the person (--face), not by the policy

    @property
    def face(self) -> Face | None:
        return None if self.index is None else self.faces[self.index]

    @property
    def several(self) -> bool:
        """More than one real face (merges not counted)."""
        return len(self.faces) - len(self.merged) > 1

    def describe(self) -> str:
        """One line for people: '3 faces found, used the one at (x0, y0, x1, y1)'."""
        if self.face is None:
            return "no face found"
        n = len(self.faces) - len(self.merged)
        at = _box_text(self.face.box)
        if n <= 1 and not self.picked:
            return f"1 face found, at {at}"
        how = "as asked" if self.picked else f"by the {self.policy} rule"
        return f"{n} faces found, used face {self.index} at {at} ({how})"

    def ambiguity(self, flag: str = "--face") -> str:
        """Why the choice is ambiguous and how to settle it (for refusals); ``flag`` is the
        option that picks a face where the message is shown."""
        where = " and ".join(f"face {i} at {_box_text(self.faces[i].box)}" for i in self.rivals)
        return (
            f"{len(self.faces) - len(self.merged)} faces found and two are equally likely to be "
            f"the person ({where}); say which with {flag} N or {flag} x0,y0,x1,y1"
        )

    def to_dict(self) -> dict:
        return {
            "faces": [{**f.to_dict(), "merge": i in self.merged} for i, f in enumerate(self.faces)],
            "face_used": self.index,
            "policy": "picked" if self.picked else self.policy,
            "ambiguous": self.ambiguous,
        }


def choose_face(
    faces: Sequence[Face],
    image_size: tuple[int, int],
    policy: str = DEFAULT_FACE_POLICY,
    pick: FacePick | str | int | None = None,
) -> FaceChoice:
    """Apply ``policy`` (or the person's ``pick``) to ``faces`` found in a photo of
    ``image_size`` (width, height). Raises :class:`SiamfaceError` for a pick that names no
    face found."""
    faces = tuple(sorted(faces, key=lambda f: f.size, reverse=True))
    pick = FacePick.parse(pick)
    if policy not in FACE_POLICIES:
        raise SiamfaceError(
            f"face policy must be one of {', '.join(FACE_POLICIES)}, got {policy!r}"
        )
    policy = "auto" if policy == "all" else policy
    if not faces:
        return FaceChoice(faces, None, policy)
    merged = merged_faces(faces) if len(faces) > 1 else set()
    cands = [i for i in range(len(faces)) if i not in merged] or list(range(len(faces)))
    merged_t = tuple(sorted(merged - set(cands)))
    if pick is not None:
        return FaceChoice(faces, _picked(faces, pick), policy, merged=merged_t, picked=True)
    if policy == "largest":
        return FaceChoice(faces, cands[0], policy, merged=merged_t)
    if policy == "score":
        best = max(cands, key=lambda i: faces[i].score)
        return FaceChoice(faces, best, policy, merged=merged_t)
    if policy == "central":
        w, h = image_size
        big = [i for i in cands if faces[i].size >= CENTRAL_MIN_SIZE * faces[cands[0]].size]
        best = min(
            big,
            key=lambda i: math.hypot(faces[i].center[0] - w / 2, faces[i].center[1] - h / 2),
        )
        return FaceChoice(faces, best, policy, merged=merged_t)
    p = prominence([faces[i] for i in cands], image_size)
    order = [cands[k] for k in np.argsort(-p, kind="stable")]
    ps = sorted(p.tolist(), reverse=True)
    ambiguous = len(ps) > 1 and ps[0] > 0 and ps[1] >= AMBIGUOUS_RATIO * ps[0]
    rivals = tuple(order[:2]) if ambiguous else ()
    return FaceChoice(faces, order[0], policy, ambiguous, rivals, merged_t)


def _picked(faces: tuple[Face, ...], pick: FacePick) -> int:
    if pick.index is not None:
        if pick.index >= len(faces):
            raise SiamfaceError(
                f"--face {pick.index}: the photo has {len(faces)} face"
                f"{'s' if len(faces) != 1 else ''} (0 to {len(faces) - 1})"
            )
        return pick.index
    assert pick.box is not None
    # A person's box may be tight (around the face) or loose (around the person): a face
    # counts when most of it lies inside the box; of those, the best-fitting box wins.
    inside = [_inter(f.box, pick.box) / max(_area(f.box), 1e-9) for f in faces]
    overlaps = [
        iou(f.box, pick.box) if k >= 0.5 else 0.0 for f, k in zip(faces, inside, strict=True)
    ]
    best = int(np.argmax(overlaps))
    if overlaps[best] <= 0.0:
        listed = "; ".join(f"{i}: {_box_text(f.box)}" for i, f in enumerate(faces))
        raise SiamfaceError(f"no face found at {_box_text(pick.box)} (faces found: {listed})")
    return best
