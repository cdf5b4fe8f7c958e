"""The backend-neutral face-embedding model every consumer uses (see ``siamface.embed.load``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from siamface.embed.pipeline import default_loader, embed_files
from siamface.errors import SiamfaceError
from siamface.faces.align import AlignedFace, align_face, centre_face
from siamface.folders.images import load_rgb, resize_uint8
from siamface.tensors.transforms import Preprocessing


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (an all-zero row stays zero rather than dividing by 0)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def apply_centre(emb: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """Unit embeddings -> centred unit embeddings (``centre`` subtracted, normalised again):
    what a centred model (a checkpoint's ``centre`` buffer, a card's ``centre``, a fusion
    member's centre) does after its own normalisation."""
    if centre is None:
        return emb
    return unit_rows(np.asarray(emb) - np.asarray(centre, dtype=np.asarray(emb).dtype))


class Embedder:
    """Backend-neutral face-embedding model. Subclasses implement :meth:`embed_batch`."""

    preprocessing: Preprocessing
    threshold: dict | None
    fingerprint: str
    embedding_size: int
    source: Path
    info: dict
    #: The BCE pair head's two scalars ``{"scale", "bias"}`` when the model has one.
    pair_head: dict | None = None
    #: Decode files in a thread pool rather than DataLoader processes (torch-free backends:
    #: the ONNX-only install has no torch; see :mod:`siamface.embed.pipeline`).
    decode_in_threads: bool = False
    #: Why this model's faces cannot be seen under a crop-level condition
    #: (:mod:`siamface.tensors.conditions` places masks and sizes faces from the ArcFace
    #: template of one HWC face crop); None when they can.
    condition_refusal: str | None = None

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NCHW faces of the model's input size -> (N, D) float32 unit vectors."""
        raise NotImplementedError

    def pair_probability(self, similarity: np.ndarray) -> np.ndarray | None:
        """Same-person probability of pairs with these cosine similarities, from the pair
        head a model trained with ``loss=bce`` carries (``sigmoid(scale * (cos - bias))``,
        the article's BCE output); None for models without one.

        The head is a monotone function of the cosine, so deciding on the probability is the
        same as deciding on the cosine at ``bias + logit(p) / scale``; the probability is
        reported beside the cosine, never instead of the calibrated threshold.
        """
        if not self.pair_head:
            return None
        z = float(self.pair_head["scale"]) * (
            np.asarray(similarity, dtype=np.float64) - float(self.pair_head["bias"])
        )
        # Numerically stable logistic: exp of a non-positive number only.
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def probability(self, similarity: float) -> float | None:
        """:meth:`pair_probability` of one pair, as a float (None without a pair head)."""
        p = self.pair_probability(np.asarray([similarity], dtype=np.float64))
        return None if p is None else float(p[0])

    def probe(self) -> None:
        """Embed one grey face at load time: weights that give NaN/Inf, or a graph that
        disagrees with its metadata, fail when the model is opened (a server refuses to
        start) instead of in the first request. Used where the weights themselves cannot be
        inspected cheaply (ONNX)."""
        size = self.preprocessing.image_size
        try:
            emb = self.embed_batch(np.full((1, 3, size, size), 128, dtype=np.uint8))
        except SiamfaceError:
            raise
        except Exception as err:  # noqa: BLE001 - runtimes raise their own types
            raise SiamfaceError(
                f"{self.source}: the model cannot run on a {size}x{size} face as its header "
                f"says ({str(err).strip()[:200]})"
            ) from err
        if emb.shape != (1, self.embedding_size):
            raise SiamfaceError(
                f"{self.source}: the model returns {emb.shape[1:]}-shaped embeddings, its "
                f"header says {self.embedding_size}"
            )
        self.checked(emb)  # a zero or non-finite embedding of a probe face: refused at load

    def checked(self, emb: np.ndarray) -> np.ndarray:
        """Refuse non-finite embeddings: a broken model must fail loudly, never answer
        "different people, similarity nan" (or a REST 200 with null)."""
        emb = np.asarray(emb, dtype=np.float32)
        if emb.size and not np.isfinite(emb).all():
            raise SiamfaceError(
                f"model {self.source} produced non-finite embeddings (NaN/Inf): its weights "
                "are unusable; use the original file or retrain"
            )
        if emb.ndim == 2 and len(emb):
            # A zero vector is a degenerate model (weights so large the norm overflows
            # normalise to all-zero vectors), and every pair would then score "different
            # people, similarity 0.0000". (Raw outputs of third-party graphs are checked here
            # before their card's normalisation, so only a vanishing length is refused.)
            norms = np.linalg.norm(emb.astype(np.float64), axis=1)
            if (norms < 1e-3).any():
                raise SiamfaceError(
                    f"model {self.source} produced degenerate embeddings (length "
                    f"{float(norms.min()):.3g} where 1 is expected): its weights are unusable; "
                    "use the original file or retrain"
                )
        return emb

    # -- conveniences shared by all backends ------------------------------------------
    def face_loader(self, ambiguous: str = "pick"):
        """Image path -> HWC uint8 face as this model wants it (a picklable callable).
        ``ambiguous="refuse"``: photos where two faces are equally likely to be the person
        fail (as :class:`~siamface.faces.AmbiguousFaceError`) instead of using the likelier.
        Models with their own face geometry (dlib's chips) override this and :meth:`locate`
        together."""
        return default_loader(self.preprocessing, ambiguous)

    def locate(self, img: Image.Image, pick=None, ambiguous: str = "pick"):
        """An already-decoded RGB image -> :class:`~siamface.faces.align.AlignedFace`: the
        face of the input size (aligned first when the model was trained on aligned faces)
        and which of the photo's faces it is (``choice``; None without detection). ``pick``
        is a person's choice (a face number or box, :class:`~siamface.faces.choose.FacePick`).
        """
        pre = self.preprocessing
        if pre.aligned:
            return align_face(img, pre, pick=pick, ambiguous=ambiguous)

        return AlignedFace(resize_uint8(img.convert("RGB"), pre.image_size), None)

    def locate_every_face(self, img: Image.Image) -> tuple[list, int]:
        """Every face of the photo (boxes that merge two faces excepted), each as this model
        sees it: (:class:`~siamface.faces.align.AlignedFace` records, largest first, whose
        ``choice`` says which face each is; the position in that list of the face the photo
        is about by the model's face rule). A model without detection gives one."""
        first = self.locate(img)
        if first.choice is None or not first.choice.several:
            return [first], 0
        keep = [i for i in range(len(first.choice.faces)) if i not in first.choice.merged]
        found = [self.locate(img, pick=i) for i in keep]
        return found, keep.index(first.choice.index)

    def centre_face(self, img: Image.Image) -> np.ndarray:
        """The photo's centre as this model's face, without detection (see
        :func:`siamface.faces.align.centre_face`): the pairs protocol's no-face fallback."""
        pre = self.preprocessing
        if pre.aligned:
            return centre_face(img, pre)
        return resize_uint8(img.convert("RGB"), pre.image_size)

    def face_array(self, img: Image.Image, ambiguous: str = "pick") -> np.ndarray:
        """:meth:`locate`'s face alone (HWC uint8 of the model's input size)."""
        return self.locate(img, ambiguous=ambiguous).crop

    #: ``info`` keys that describe where a model comes from and what it expects (``--json``
    #: outputs and the web page's model card show them).
    CARD_KEYS = (
        "name",
        "description",
        "license",
        "provenance",
        "input_contract",
        "tta",
        "members",
    )

    def card(self) -> dict:
        """Name, licence, provenance, input contract, flip averaging and fusion members, as
        far as the model records them."""
        info = self.info if isinstance(self.info, dict) else {}
        return {k: info[k] for k in self.CARD_KEYS if info.get(k) is not None}

    def display_face(self, img: Image.Image) -> np.ndarray:
        """The face crop to show a person (gallery thumbnails): the model's input face.
        Models whose input is not one picture (a fusion packs its members' crops) override
        it."""
        return self.face_array(img)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Embed decoded images (e.g. uploads); raises ImageLoadError subclasses per image."""
        faces = [self.face_array(im).transpose(2, 0, 1) for im in images]
        if not faces:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        out = [
            self.embed_batch(np.stack(faces[i : i + batch_size]))
            for i in range(0, len(faces), batch_size)
        ]
        return np.concatenate(out)

    def embed_paths(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 64,
        workers: int | None = None,
        progress: bool = True,
        ambiguous: str = "pick",
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Embed image files in batches with parallel decoding (the one file pipeline,
        :func:`~siamface.embed.pipeline.embed_files`).

        Returns (embeddings of the readable files in order, {index: reason} for the others).
        ``ambiguous="refuse"`` lists photos with two equally likely faces among the others.
        """
        if self.decode_in_threads:
            return embed_files(
                self.embed_batch,
                [Path(p) for p in paths],
                self.preprocessing,
                batch_size=batch_size,
                workers=workers,
                loader=DecodedFaceLoader(self, ambiguous),
                progress=progress,
                threads=True,
                empty_dim=self.embedding_size,
            )
        return embed_files(
            self.embed_batch,
            [Path(p) for p in paths],
            self.preprocessing,
            batch_size=batch_size,
            workers=workers,
            loader=self.face_loader(ambiguous),
            progress=progress,
        )

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of matching rows (embeddings are unit vectors)."""
        return np.einsum("ij,ij->i", np.atleast_2d(a), np.atleast_2d(b))


class DecodedFaceLoader:
    """Path -> the model's face via :meth:`Embedder.face_array` (in the calling process: the
    thread-pool decoding of torch-free backends, which share the model's detector)."""

    def __init__(self, embedder: Embedder, ambiguous: str = "pick") -> None:
        self.embedder, self.ambiguous = embedder, ambiguous

    def __call__(self, path: Path) -> np.ndarray:
        return self.embedder.face_array(load_rgb(path), self.ambiguous)
