"""Face models together: score fusion as one model (``--model sface+dlib``, ``fused.json``).

Two recognisers trained on different data with different architectures make different
mistakes, so a weighted sum of their cosine similarities separates people better than either.
The weights come from a logistic regression on the members' cosines over validation pairs
(``siamface fuse``): ``p(same) = sigmoid(sum_i beta_i * cos_i + beta_0)``. The regression also
maps the members' very different similarity scales (dlib's cosines crowd near 1, SFace's spread
over [-0.2, 1]) onto one.

Deciding on that probability is deciding on ``s = sum_i w_i * cos_i`` with
``w_i = beta_i / sum(beta)`` (a monotone map), and ``s`` *is a cosine*: the fused embedding is
the concatenation of the members' unit embeddings scaled by ``sqrt(w_i)``, itself a unit vector,
and the dot product of two such vectors is exactly ``s``. So a fused model is an ordinary
:class:`Embedder` (fixed-size unit vectors, one cosine, one threshold): galleries, the ANN
index, Milvus and the REST service use it unchanged. Its threshold is calibrated on the fused
score; the regression's intercept becomes its pair head (``sigmoid(scale * (s - bias))``).

A member may also be *centred*: its mean unit embedding over the fitting faces subtracted and
the result normalised again, before the weighting (``centre`` in its record). The fused
embedding stays a unit vector and the dot product stays the fused score. Learning (centres,
weights, the record) lives in :mod:`siamface.embed.fusion_fit`.

A fusion file is JSON (``"format": "siamface.fusion"``): the members (built-in names or
absolute paths, each with its fingerprint, weight, optional centre and test-time augmentation),
the threshold record, and the provenance of the fit (data, pair counts, when, library
versions).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from siamface.embed.base import Embedder, apply_centre, unit_rows
from siamface.errors import SiamfaceError
from siamface.faces.align import AlignedFace

FORMAT = "siamface.fusion"
FORMAT_VERSION = 1
#: Fusions learned by the project and shipped with it, by member spec (``sface+dlib``).
PACKAGED_DIR = Path(__file__).resolve().parents[1] / "model" / "fusions"


def is_fusion_file(path: Path) -> bool:
    """Whether ``path`` is a fusion file (a JSON object whose format says so)."""
    if not path.is_file() or path.stat().st_size > 1_000_000:
        return False
    try:
        with path.open("rb") as f:
            if f.read(1) != b"{":
                return False
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_fusion(path: str | Path) -> dict:
    """Read and check a fusion file."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SiamfaceError(f"cannot read fusion file {path}: {err}") from err
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise SiamfaceError(f"{path} is not a siamface fusion file")
    if int(rec.get("version", 0)) > FORMAT_VERSION:
        raise SiamfaceError(
            f"{path} is a fusion file of a newer siamface (version {rec.get('version')}); "
            "upgrade siamface"
        )
    members = rec.get("members")
    if not isinstance(members, list) or len(members) < 2:
        raise SiamfaceError(f"{path}: a fusion needs at least two members")
    for m in members:
        w = m.get("weight") if isinstance(m, dict) else None
        if not isinstance(m, dict) or not m.get("model") or not isinstance(w, int | float):
            raise SiamfaceError(f"{path}: each member needs a model and a numeric weight")
        if not w >= 0:
            raise SiamfaceError(f"{path}: member weights must be >= 0, got {w}")
        c = m.get("centre")
        if c is not None and (
            not isinstance(c, list)
            or not c
            or not all(isinstance(v, int | float) and np.isfinite(v) for v in c)
        ):
            raise SiamfaceError(f"{path}: member {m['model']}'s centre must be a list of numbers")
    if sum(m["weight"] for m in members) <= 0:
        raise SiamfaceError(f"{path}: all member weights are zero")
    return rec


def packaged_fusion(members: Sequence[str]) -> Path | None:
    """The shipped fusion file for exactly these members (in this order), if any."""
    p = PACKAGED_DIR / ("+".join(members) + ".json")
    return p if p.is_file() else None


def write_fusion(rec: dict, path: str | Path) -> Path:
    """Write a fusion record atomically (a half-written file is never left behind)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


class FusedFaceLoader:
    """Path -> every member's face crop, packed into one uint8 array (picklable).

    Code that moves faces around (DataLoader workers, the service's micro-batcher) handles
    one HWC array per face; packing the members' crops (of different sizes) into one
    ``1 x L x 1`` array lets a fused model travel through it unchanged."""

    def __init__(self, loaders: Sequence[Callable[[Path], np.ndarray]]) -> None:
        self.loaders = list(loaders)

    def __call__(self, path: Path) -> np.ndarray:
        return pack([load(path) for load in self.loaders])


def pack(faces: Sequence[np.ndarray]) -> np.ndarray:
    """Members' HWC faces -> one ``1 x L x 1`` uint8 array (CHW order inside)."""
    flat = [np.ascontiguousarray(f.transpose(2, 0, 1)).ravel() for f in faces]
    return np.concatenate(flat)[None, :, None]


class FusedEmbedder(Embedder):
    """Several face models as one: weighted concatenation of their unit embeddings."""

    condition_refusal = (
        "a fused model's face is every member's crop packed together, not one face crop"
    )

    def __init__(
        self,
        members: Sequence[Embedder],
        weights: Sequence[float],
        threshold: dict | None,
        source: Path,
        info: dict,
        pair_head: dict | None = None,
        centres: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if len(members) != len(w) or len(members) < 2:
            raise SiamfaceError("a fusion needs at least two members, one weight each")
        if (w < 0).any() or w.sum() <= 0:
            raise SiamfaceError(f"fusion weights must be >= 0 and not all zero, got {list(w)}")
        self.members = list(members)
        self.centres = [
            None if c is None else np.asarray(c, np.float32).reshape(-1)
            for c in (centres if centres is not None else [None] * len(self.members))
        ]
        if len(self.centres) != len(self.members):
            raise SiamfaceError("a fusion needs one centre (or none) per member")
        for m, c in zip(self.members, self.centres, strict=True):
            if c is not None and len(c) != m.embedding_size:
                raise SiamfaceError(
                    f"member {m.source}'s centre has {len(c)} values, its embedding "
                    f"{m.embedding_size}"
                )
        self.weights = w / w.sum()
        self._scale = np.sqrt(self.weights).astype(np.float32)
        self.threshold = threshold
        self.pair_head = pair_head
        self.source = source
        self.embedding_size = int(sum(m.embedding_size for m in members))
        # The first member's record describes the input for cards and health checks; each
        # member aligns faces its own way (see face_array).
        self.preprocessing = members[0].preprocessing
        parts = [
            f"{m.fingerprint}*{wi:.6f}"
            + ("" if c is None else "-c" + hashlib.sha256(c.tobytes()).hexdigest()[:8])
            for m, wi, c in zip(members, self.weights, self.centres, strict=True)
        ]
        self.fingerprint = "fused-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:11]
        self.info = {
            **info,
            "members": [
                {
                    "name": (m.info or {}).get("name", str(m.source)),
                    "weight": round(float(wi), 6),
                    "centred": c is not None,
                }
                for m, wi, c in zip(members, self.weights, self.centres, strict=True)
            ],
        }
        self._shapes = [
            (3, m.preprocessing.image_size, m.preprocessing.image_size) for m in members
        ]

    # -- faces ---------------------------------------------------------------------------
    def face_loader(self, ambiguous: str = "pick"):
        return FusedFaceLoader([m.face_loader(ambiguous) for m in self.members])

    def locate(self, img: Image.Image, pick=None, ambiguous: str = "pick"):
        """Every member's crop of the same face (members use one detector and one face
        rule, so they choose alike), packed; the choice is the first member's."""

        found = [m.locate(img, pick=pick, ambiguous=ambiguous) for m in self.members]
        return AlignedFace(pack([f.crop for f in found]), found[0].choice)

    def centre_face(self, img: Image.Image) -> np.ndarray:
        return pack([m.centre_face(img) for m in self.members])

    def display_face(self, img: Image.Image) -> np.ndarray:
        """A face crop a person can look at (the first member's), e.g. for thumbnails."""
        return self.members[0].face_array(img)

    # -- embeddings ----------------------------------------------------------------------
    def combine(self, member_embeddings: Sequence[np.ndarray]) -> np.ndarray:
        """Members' unit embeddings (same rows) -> fused unit embeddings."""
        parts = [
            apply_centre(np.asarray(e, np.float32), c) * s
            for e, c, s in zip(member_embeddings, self.centres, self._scale, strict=True)
        ]
        out = np.concatenate(parts, axis=1)
        # Already unit length up to rounding; normalising keeps cosines exact in float32.
        return self.checked(unit_rows(out))

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        x = np.asarray(pixels, dtype=np.uint8)
        n = len(x)
        if n == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        flat = x.reshape(n, -1)
        sizes = [int(np.prod(s)) for s in self._shapes]
        if flat.shape[1] != sum(sizes):
            raise ValueError(
                f"a fused model takes packed faces of {sum(sizes)} values, got {flat.shape[1]}"
            )
        out, start = [], 0
        for m, shape, size in zip(self.members, self._shapes, sizes, strict=True):
            faces = np.ascontiguousarray(flat[:, start : start + size]).reshape(n, *shape)
            out.append(m.embed_batch(faces))
            start += size
        return self.combine(out)

    def embed_paths(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 64,
        workers: int | None = None,
        progress: bool = True,
        ambiguous: str = "pick",
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Each member embeds the files its own (fastest) way; a file any member cannot use
        is reported once, with that member's reason."""
        paths = [Path(p) for p in paths]
        results = [
            m.embed_paths(
                paths,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
                ambiguous=ambiguous,
            )
            for m in self.members
        ]
        errors: dict[int, str] = {}
        for _, err in results:
            for i, reason in err.items():
                errors.setdefault(i, reason)
        keep = [i for i in range(len(paths)) if i not in errors]
        parts = []
        for emb, err in results:
            rows = [i for i in range(len(paths)) if i not in err]  # this member's rows
            where = {i: r for r, i in enumerate(rows)}
            parts.append(
                emb[[where[i] for i in keep]]
                if keep
                else np.zeros((0, emb.shape[1] if emb.ndim == 2 else 0), np.float32)
            )
        if not keep:
            return np.zeros((0, self.embedding_size), dtype=np.float32), errors
        return self.combine(parts), errors

    def probe(self) -> None:  # members probed themselves when opened
        return None


def open_fusion(
    path: Path,
    open_member: Callable[[str], Embedder],
    tta: str = "none",
    label: str | None = None,
) -> FusedEmbedder:
    """Open a fusion file; ``open_member`` opens each member spec (with ``tta`` applied).

    A member whose fingerprint differs from the recorded one (another file at that path, or
    another version of a package's weights) is refused: its weights were fitted for the old
    one."""
    rec = read_fusion(path)
    if tta == "none":
        tta = str(rec.get("tta") or "none")
    members = []
    for m in rec["members"]:
        spec = str(m["model"])
        emb = open_member(spec if tta == "none" else f"{spec}:tta={tta}")
        base = emb.inner if tta != "none" and hasattr(emb, "inner") else emb
        want = m.get("fingerprint")
        if want and base.fingerprint != want:
            raise SiamfaceError(
                f"{path}: member {spec} has changed since the fusion was fitted (fingerprint "
                f"{base.fingerprint}, recorded {want}); run siamface fuse again"
            )
        members.append(emb)
    prov = rec.get("provenance") or {}
    thr = rec.get("threshold")
    if tta != str(rec.get("tta") or "none") and thr:
        thr = {**thr, "note": f"calibrated without tta={tta}"}
    info = {
        "name": label or path.stem,
        "description": "fusion of " + " + ".join(str(m["model"]) for m in rec["members"]),
        "provenance": public_provenance(prov),
        "license": ", ".join(
            f"{(e.info or {}).get('name', '?')}: {(e.info or {}).get('license', 'unknown')}"
            for e in members
        ),
    }
    if tta != "none":
        info["tta"] = tta
    return FusedEmbedder(
        members,
        [float(m["weight"]) for m in rec["members"]],
        threshold=thr,
        source=Path(label) if label else path,
        info=info,
        pair_head=rec.get("pair_head"),
        centres=[m.get("centre") for m in rec["members"]],
    )


def public_provenance(prov: dict) -> str:
    """One line for model cards: how and on what the weights were fitted."""
    keys = ("data", "identities", "genuine_pairs", "impostor_pairs", "created")
    return ", ".join(f"{k} {prov[k]}" for k in keys if prov.get(k) is not None) or "unknown"


def equal_fusion(members: Sequence[Embedder], label: str, tta: str = "none") -> FusedEmbedder:
    """An unfitted fusion (no learned file for these members): equal weights, the mean of
    the members' thresholds. Said so on its model card; ``siamface fuse`` learns better."""
    values = [m.threshold.get("value") for m in members if m.threshold]
    values = [v for v in values if v is not None]
    thr = (
        {
            "value": float(np.mean(values)),
            "target_far": None,
            "far": None,
            "tar": None,
            "source": "mean of the members' thresholds (uncalibrated: run siamface fuse)",
        }
        if len(values) == len(members)
        else None
    )
    info = {
        "name": label,
        "description": "equal-weight fusion (not fitted: run siamface fuse for learned weights)",
        "license": ", ".join(
            f"{(e.info or {}).get('name', '?')}: {(e.info or {}).get('license', 'unknown')}"
            for e in members
        ),
    }
    if tta != "none":
        info["tta"] = tta
    return FusedEmbedder(
        members, [1.0] * len(members), threshold=thr, source=Path(label), info=info
    )
