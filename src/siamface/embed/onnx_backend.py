"""Run an exported siamface ``.onnx`` model with onnxruntime, without torch.

The exported graph takes uint8 RGB faces (NCHW, any batch size) and does the normalisation
itself, so this backend only decodes, resizes (or aligns) and calls onnxruntime. Everything
else a consumer needs (input size, alignment, threshold, fingerprint) is read from the
metadata that ``siamface export`` stores inside the file. This module must never import
torch: it is what the inference-only install (numpy + pillow + onnxruntime) runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from siamface.embed.base import Embedder, apply_centre, unit_rows
from siamface.embed.card import card_beside, read_card
from siamface.errors import SiamfaceError
from siamface.model.onnx_weights import runnable_graph
from siamface.model.validate import check_onnx_metadata, parse_header
from siamface.system import usable_cpus
from siamface.tensors.transforms import Preprocessing

#: Key of the JSON metadata record in the ONNX file's ``metadata_props``.
METADATA_KEY = "siamface"
FORMAT = "siamface.onnx"
FORMAT_VERSION = 1


class OnnxEmbedder(Embedder):
    """An exported ``.onnx`` model run with onnxruntime (CPU, or CUDA when available).

    ``threads`` caps onnxruntime's intra-op threads (default: all cores). Thread spinning is
    off by default: spinning workers burn the cores that image decoding and the web server
    need, for a gain that only shows in back-to-back micro-benchmarks. Files are decoded in a
    thread pool (PIL and onnxruntime release the GIL), never in torch's DataLoader.
    """

    decode_in_threads = True

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        spinning: bool = False,
    ) -> None:
        path = Path(path)
        self.session = make_session(path, path, threads, providers, spinning)
        meta = _parse_metadata(path, self.session.get_modelmeta().custom_metadata_map)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise SiamfaceError(f"{path}: expected one image input, found {len(inputs)}")
        inp, out = inputs[0], outputs[0]
        if inp.type != "tensor(uint8)":
            raise SiamfaceError(f"{path}: expected a uint8 image input, found {inp.type}")
        self.input_name, self.output_name = inp.name, out.name
        self.metadata = meta
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.threshold = meta.get("threshold")
        self.fingerprint = str(meta["fingerprint"])
        self.embedding_size = int(meta["embedding_size"])
        self.pair_head = meta.get("pair_head")  # {"scale", "bias"} or None
        self.source = path
        self.info = meta.get("info") or {}
        _check_graph_matches(
            path, inp.shape, out.shape, self.preprocessing.image_size, self.embedding_size
        )
        self.probe()

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        size = self.preprocessing.image_size
        x = np.ascontiguousarray(pixels, dtype=np.uint8)
        if x.ndim != 4 or x.shape[1:] != (3, size, size):
            raise ValueError(f"expected uint8 N x 3 x {size} x {size} faces, got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return self.checked(out)


def open_onnx(
    path: str | Path,
    device: str = "auto",
    card: str | Path | None = None,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> OnnxEmbedder:
    """The ``onnx`` entry of :data:`~siamface.embed.load.EMBEDDER_BACKENDS`: an export made
    by ``siamface export``, or a third-party file run through its model card (``card``, or
    ``FILE.card.yaml`` beside a file without siamface metadata). ``device`` is unused:
    onnxruntime picks CUDA when it has it."""
    path = Path(path)
    card_path = Path(card).expanduser() if card is not None else None
    if card_path is None:
        beside = card_beside(path)  # looked at only when there is one: exports have none
        if beside is not None and not has_siamface_metadata(path):
            card_path = beside
    if card_path is not None:
        return CardOnnxEmbedder(path, read_card(card_path), threads=threads, providers=providers)
    return OnnxEmbedder(path, threads=threads, providers=providers)


class CardOnnxEmbedder(OnnxEmbedder):
    """A third-party face-recognition ``.onnx`` file run through its model card.

    The card (:mod:`siamface.embed.card`) supplies what the graph cannot: colour order,
    mean/std, face crop, licence. The input size comes from the graph when it is fixed there.
    The graph is loaded folded (:func:`~siamface.model.onnx_weights.runnable_graph`), so
    exports that list their weights as inputs and fix the batch to 1 run on whole batches.
    Everything downstream sees an ordinary :class:`Embedder`: uint8 RGB faces in, unit
    vectors out; the colour swap and normalisation happen here, in numpy.
    """

    def __init__(
        self,
        path: str | Path,
        card,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        spinning: bool = False,
    ) -> None:
        import hashlib
        import json

        path = Path(path)
        blob, changes = runnable_graph(path)
        self.session = make_session(blob, path, threads, providers, spinning)
        self.model_card = card
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise SiamfaceError(f"{path}: expected one image input, the graph has {names}")
        inp = inputs[0]
        if inp.type not in ("tensor(float)", "tensor(uint8)"):
            raise SiamfaceError(f"{path}: expected a float or uint8 image input, found {inp.type}")
        self.input_name, self._input_float = inp.name, inp.type == "tensor(float)"
        outputs = {o.name: o for o in self.session.get_outputs()}
        out_name = card.output_name or next(iter(outputs))
        if out_name not in outputs:
            raise SiamfaceError(
                f"{card.path}: output_name {out_name!r} is not an output of {path.name} "
                f"(outputs: {', '.join(outputs)})"
            )
        self.output_name = out_name
        size = _card_input_size(path, card, inp.shape)
        self.preprocessing = Preprocessing(
            size,
            tuple(m / 255.0 for m in card.mean),
            tuple(s / 255.0 for s in card.std),
            aligned=card.alignment == "arcface",
            align={"margin": card.margin} if card.margin else {},
        )
        self._mean = np.asarray(card.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(card.std, np.float32).reshape(1, 3, 1, 1)
        out_shape = outputs[out_name].shape
        dim = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
        digest = hashlib.sha256(path.read_bytes())
        digest.update(json.dumps(card.contract(), sort_keys=True).encode())
        self.fingerprint = "onnx-" + digest.hexdigest()[:11]
        self.source = path
        self.metadata = {"format": "onnx+card", "card": card.to_dict(), "graph": changes}
        self.threshold = (
            {
                "value": card.threshold,
                "target_far": None,
                "far": None,
                "tar": None,
                "source": card.threshold_source or f"model card {Path(card.path).name}",
            }
            if card.threshold is not None
            else None
        )
        self.pair_head = None
        self.info = {
            "name": card.name or path.stem,
            "description": card.description or f"third-party ONNX model {path.name}",
            "license": card.license or "unknown (the card gives none)",
            "provenance": card.provenance or "unknown (the card gives none)",
            "card": card.to_dict(),
            "input_contract": (
                f"{card.colour_order.upper()} {size}x{size} {card.layout.upper()}, mean "
                f"{'/'.join(f'{m:g}' for m in card.mean)}, std "
                f"{'/'.join(f'{v:g}' for v in card.std)}, "
                + (
                    f"ArcFace 5-point alignment (margin {card.margin:g})"
                    if card.alignment == "arcface"
                    else "no alignment (tight crops)"
                )
            ),
            "format": "onnx (third-party, model card)",
        }
        self.embedding_size = dim or 0
        if not self.embedding_size:  # symbolic output width: ask the graph
            grey = np.full((1, 3, size, size), 128, np.uint8)
            self.embedding_size = int(self._run(grey).shape[1])
        self._centre = None if card.centre is None else np.asarray(card.centre, np.float32)
        if self._centre is not None and len(self._centre) != self.embedding_size:
            raise SiamfaceError(
                f"{card.path}: centre has {len(self._centre)} values, the model's embedding "
                f"{self.embedding_size}"
            )
        self.info["centred"] = self._centre is not None
        self.probe()

    def _run(self, x: np.ndarray) -> np.ndarray:
        """uint8 RGB NCHW -> the graph's raw output for it (colour order, mean/std, layout)."""
        if self.model_card.colour_order == "bgr":
            x = x[:, ::-1]
        if self._input_float:
            feed = (x.astype(np.float32) - self._mean) / self._std
        else:
            feed = np.ascontiguousarray(x)
        if self.model_card.layout == "nhwc":
            feed = feed.transpose(0, 2, 3, 1)
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(feed)})
        return np.asarray(out[0], dtype=np.float32).reshape(len(x), -1)

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        size = self.preprocessing.image_size
        x = np.asarray(pixels, dtype=np.uint8)
        if x.ndim != 4 or x.shape[1:] != (3, size, size):
            raise ValueError(f"expected uint8 N x 3 x {size} x {size} faces, got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        out = unit_rows(self.checked(self._run(x)))
        return out if self._centre is None else apply_centre(out, self._centre)


def _card_input_size(path: Path, card, shape) -> int:
    """The square input size: fixed in the graph (a card that disagrees is refused) or from
    the card (graphs with symbolic height/width)."""
    if len(shape) != 4:
        raise SiamfaceError(f"{path}: expected a 4-d image input, the graph takes {shape}")
    hw = shape[2:4] if card.layout == "nchw" else shape[1:3]
    channels = shape[1] if card.layout == "nchw" else shape[3]
    if isinstance(channels, int) and channels != 3:
        other = "nhwc" if card.layout == "nchw" else "nchw"
        raise SiamfaceError(
            f"{path}: the graph's input {shape} has {channels} channels where the card's layout "
            f"{card.layout} puts them; is the layout {other}?"
        )
    fixed = [d for d in hw if isinstance(d, int) and d > 0]
    if fixed:
        if len(fixed) == 2 and fixed[0] != fixed[1]:
            raise SiamfaceError(f"{path}: non-square inputs ({hw}) are not supported")
        if card.input_size is not None and card.input_size != fixed[0]:
            raise SiamfaceError(
                f"{card.path}: input_size {card.input_size} disagrees with the graph of "
                f"{path.name}, which takes {fixed[0]} x {fixed[0]} faces; fix the card"
            )
        return int(fixed[0])
    if card.input_size is None:
        raise SiamfaceError(
            f"{card.path}: the graph of {path.name} does not fix its input size; give "
            "input_size in the card"
        )
    return int(card.input_size)


def has_siamface_metadata(path: Path) -> bool:
    """Whether ``path`` is a ``siamface export`` file (its metadata record is present)."""
    try:
        import onnx
    except ImportError:  # the torch-free install: onnxruntime reads the metadata too
        import onnxruntime as ort

        try:
            meta = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
        except Exception:  # noqa: BLE001 - let the session report unreadable files
            return True
        return METADATA_KEY in meta
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - let the session report unreadable files
        return True
    return any(p.key == METADATA_KEY for p in model.metadata_props)


def make_session(
    model: Path | bytes,
    label: Path,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    spinning: bool = False,
):
    """An onnxruntime session with siamface's settings (see :class:`OnnxEmbedder`), for a
    file or an in-memory (e.g. folded) model; ``label`` names it in errors."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or usable_cpus()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3  # errors only: ORT's warnings are not for end users
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider",) if p in available]
        providers.append("CPUExecutionProvider")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=list(providers))
    except Exception as err:  # noqa: BLE001 - ORT raises its own pybind types
        raise SiamfaceError(f"{label} is not a readable ONNX model: {err}") from err


def _parse_metadata(path: Path, props: dict[str, str]) -> dict:
    raw = props.get(METADATA_KEY)
    if raw is None:
        raise SiamfaceError(
            f"{path} is an ONNX model not made by 'siamface export' and has no model card: "
            f"write {path.name}.card.yaml beside it (colour order, mean/std, alignment, "
            "licence; see docs/models.md) or pass --card FILE"
        )
    meta = parse_header(raw, path, "metadata")
    return check_onnx_metadata(meta, path, FORMAT, FORMAT_VERSION)


def _check_graph_matches(path: Path, in_shape, out_shape, size: int, dim: int) -> None:
    """Static dimensions of the graph must agree with the metadata (symbolic ones may)."""
    want_in = [None, 3, size, size]
    if len(in_shape) != 4 or any(
        isinstance(g, int) and w is not None and g != w
        for g, w in zip(in_shape, want_in, strict=True)
    ):
        raise SiamfaceError(
            f"{path}: the graph takes {in_shape} inputs but its metadata says N x 3 x "
            f"{size} x {size}; the file was edited or damaged"
        )
    if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] != dim:
        raise SiamfaceError(
            f"{path}: the graph returns {out_shape[1]}-d embeddings but its metadata says "
            f"{dim}; the file was edited or damaged"
        )
