"""A loaded face-embedding model, whatever its format: the object every consumer uses.

Evaluation, verification, the gallery and the REST service all need the same few things from a
model: its preprocessing contract, its stored decision threshold, a fingerprint (so embeddings
of different models are never mixed), and "uint8 faces in, unit vectors out". :class:`Embedder`
provides exactly that (``base``); ``torch_backend.TorchEmbedder`` runs a siamface checkpoint
with PyTorch and ``onnx_backend.OnnxEmbedder`` runs an exported ``.onnx`` file with
onnxruntime (no torch needed). :func:`open_model` picks the backend from the file; backends are
imported only when used, so ``import siamface.embed.load`` stays light.
"""

from __future__ import annotations

from pathlib import Path

from siamface.embed.base import Embedder
from siamface.errors import SiamfaceError

__all__ = [
    "Embedder",
    "builtin_model_names",
    "model_available",
    "model_reference",
    "open_model",
]


#: Built-in models that another library computes (not a siamface network): name -> module
#: and class of their backend. Built-in siamface networks (``sface``) live in the model zoo.
EXTERNAL_MODELS = {"dlib": ("siamface.embed.dlib_backend", "DlibEmbedder")}


def builtin_model_names() -> list[str]:
    """Names ``open_model`` accepts besides paths (imports torch for the zoo's list)."""
    try:
        from siamface.model.zoo import pretrained_names
    except ImportError:  # the torch-free inference install has no zoo
        return sorted(EXTERNAL_MODELS)
    return sorted(set(pretrained_names()) | set(EXTERNAL_MODELS))


def model_reference(spec: str | Path) -> str:
    """What to record (in a gallery, a report) so that the model can be opened again later:
    the absolute path of a file, or the name of a built-in model; fusions of names
    (``sface+dlib``) and test-time augmentation (``:tta=flip``) are kept."""
    from siamface.embed.tta import split_tta

    base, tta = split_tta(str(spec))
    suffix = "" if tta == "none" else f":tta={tta}"
    p = Path(base).expanduser()
    if p.exists():
        return str(p.resolve()) + suffix
    if base in builtin_model_names():
        return base + suffix
    if "+" in base:
        return "+".join(model_reference(m) for m in base.split("+")) + suffix
    return str(p.resolve()) + suffix


def model_available(reference: str | None) -> bool:
    """True when :func:`open_model` can find ``reference`` (a recorded model)."""
    if not reference:
        return False
    from siamface.embed.tta import split_tta

    base = split_tta(str(reference))[0]
    if Path(base).exists() or base in builtin_model_names():
        return True
    return "+" in base and all(model_available(m) for m in base.split("+"))


def open_model(path: str | Path, device: str = "auto", card: str | Path | None = None) -> Embedder:
    """Open a model by spec: a siamface checkpoint (``.safetensors`` or a run directory), an
    exported ``.onnx`` model, a third-party ``.onnx`` with its model card (beside it as
    ``FILE.card.yaml``, or ``card``), a fusion file (``siamface fuse``), a built-in face model
    by name (``sface``; ``dlib`` when installed), several of these joined by ``+`` (a fusion:
    the shipped learned weights when there are some for those members, else equal weights),
    and any of these followed by ``:tta=flip`` (flip averaging)."""
    from siamface.embed.tta import FlipEmbedder, split_tta

    base, tta = split_tta(str(path))
    p = Path(base).expanduser()
    if p.exists() or "+" not in base:
        from siamface.embed.fusion import is_fusion_file, open_fusion

        if is_fusion_file(p):
            return open_fusion(p, lambda s: open_model(s, device=device), tta)
        model = _open_single(base, device, card)
        return FlipEmbedder(model) if tta == "flip" else model
    from siamface.embed.fusion import equal_fusion, open_fusion, packaged_fusion

    names = [m.strip() for m in base.split("+")]
    if any(not m for m in names) or len(names) < 2:
        raise SiamfaceError(f"a fusion is MODEL+MODEL[+...], got {base!r}")
    if card is not None:
        raise SiamfaceError("--card applies to one ONNX file; put cards beside fused members")
    shipped = packaged_fusion(names)
    if shipped is not None:
        return open_fusion(shipped, lambda s: open_model(s, device=device), tta, label=base)
    members = [open_model(m if tta == "none" else f"{m}:tta={tta}", device=device) for m in names]
    return equal_fusion(members, base, tta)


def _open_single(spec: str, device: str, card: str | Path | None) -> Embedder:
    p = Path(spec).expanduser()
    if card is not None and p.suffix != ".onnx":
        raise SiamfaceError(f"--card describes a third-party .onnx file, not {spec}")
    if not p.exists():
        name = str(spec)
        if name in EXTERNAL_MODELS:
            import importlib

            module, cls = EXTERNAL_MODELS[name]
            return getattr(importlib.import_module(module), cls)()
        names = builtin_model_names()
        if name in names:
            from siamface.embed.torch_backend import TorchEmbedder

            return TorchEmbedder(name, device=device)
        raise SiamfaceError(f"model not found: {p} (built-in models: {', '.join(names)})")
    if p.suffix == ".onnx":
        try:
            from siamface.embed.onnx_backend import (
                CardOnnxEmbedder,
                OnnxEmbedder,
                has_siamface_metadata,
            )
        except ImportError as err:
            raise SiamfaceError(
                f"cannot run {p}: ONNX support is missing ({err}); pip install onnxruntime"
            ) from err
        from siamface.embed.card import card_beside, read_card

        card_path = Path(card).expanduser() if card is not None else None
        if card_path is None:
            beside = card_beside(p)  # looked at only when there is one: exports have none
            if beside is not None and not has_siamface_metadata(p):
                card_path = beside
        if card_path is not None:
            return CardOnnxEmbedder(p, read_card(card_path))
        return OnnxEmbedder(p)
    from siamface.embed.torch_backend import TorchEmbedder

    return TorchEmbedder(p, device=device)
