"""A loaded face-embedding model, whatever its format: the object every consumer uses.

Evaluation, verification, the gallery and the REST service all need the same few things from a
model: its preprocessing contract, its stored decision threshold, a fingerprint (so embeddings
of different models are never mixed), and "uint8 faces in, unit vectors out". :class:`Embedder`
provides exactly that (``base``). :func:`create_embedder` is the one way to get one (timm's
``create_model`` pattern): it reads the spec (a file, a built-in name, ``A+B`` fusions,
``:tta=flip``) and builds the backend registered in :data:`EMBEDDER_BACKENDS` for it:
``torch`` runs a siamface checkpoint with PyTorch, ``onnx`` an exported or carded ``.onnx``
file with onnxruntime (no torch needed), ``dlib`` dlib's network. Backends are lazy entries,
imported only when chosen, so ``import siamface.embed.load`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from siamface.embed.base import Embedder
from siamface.embed.fusion import equal_fusion, is_fusion_file, open_fusion, packaged_fusion
from siamface.embed.tta import FlipEmbedder, split_tta
from siamface.errors import SiamfaceError
from siamface.registry import Registry

__all__ = [
    "EMBEDDER_BACKENDS",
    "Embedder",
    "builtin_model_names",
    "create_embedder",
    "model_available",
    "model_reference",
]

#: The embedder backends by name. A builder is called as ``builder(spec, device=..., **options)``
#: and returns an :class:`Embedder`. Facts: ``suffixes`` (model files it runs), ``models``
#: (built-in names it computes besides the model zoo's), ``needs`` and ``install`` (what a
#: missing import means and how to fix it, for the error).
EMBEDDER_BACKENDS: Registry = Registry("embedder backend")
EMBEDDER_BACKENDS.register_lazy(
    "torch",
    "siamface.embed.torch_backend:TorchEmbedder",
    help="siamface checkpoints (.safetensors, run folders) and the model zoo, with PyTorch",
    suffixes=(".safetensors",),
    needs="PyTorch support",
    install="pip install torch",
)
EMBEDDER_BACKENDS.register_lazy(
    "onnx",
    "siamface.embed.onnx_backend:open_onnx",
    help="exported .onnx models and third-party .onnx files with a model card (onnxruntime)",
    suffixes=(".onnx",),
    card=True,
    needs="ONNX support",
    install="pip install onnxruntime",
)
EMBEDDER_BACKENDS.register_lazy(
    "dlib",
    "siamface.embed.dlib_backend:open_dlib",
    help="dlib's ResNet face recogniser (pip install 'siamface[dlib]')",
    models=("dlib",),
)


def _named_models() -> dict[str, str]:
    """Built-in names computed by another library (not a siamface network) -> backend."""
    return {m: e.name for e in EMBEDDER_BACKENDS for m in e.facts.get("models", ())}


def builtin_model_names() -> list[str]:
    """Names ``create_embedder`` accepts besides paths (imports torch for the zoo's list)."""
    try:
        from siamface.model.zoo import pretrained_names  # lazy: torch (absent in ONNX installs)
    except ImportError:  # the torch-free inference install has no zoo
        return sorted(_named_models())
    return sorted(set(pretrained_names()) | set(_named_models()))


def model_reference(spec: str | Path) -> str:
    """What to record (in a gallery, a report) so that the model can be opened again later:
    the absolute path of a file, or the name of a built-in model; fusions of names
    (``sface+dlib``) and test-time augmentation (``:tta=flip``) are kept."""
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
    """True when :func:`create_embedder` can find ``reference`` (a recorded model)."""
    if not reference:
        return False
    base = split_tta(str(reference))[0]
    if Path(base).exists() or base in builtin_model_names():
        return True
    return "+" in base and all(model_available(m) for m in base.split("+"))


def create_embedder(
    spec: str | Path,
    device: str = "auto",
    card: str | Path | None = None,
    *,
    backend: str | None = None,
    **options: Any,
) -> Embedder:
    """The one entry point to a face model, by spec: a siamface checkpoint (``.safetensors``
    or a run directory), an exported ``.onnx`` model, a third-party ``.onnx`` with its model
    card (beside it as ``FILE.card.yaml``, or ``card``), a fusion file (``siamface fuse``), a
    built-in face model by name (``sface``; ``dlib`` when installed), several of these joined
    by ``+`` (a fusion: the shipped learned weights when there are some for those members,
    else equal weights), and any of these followed by ``:tta=flip`` (flip averaging).

    ``backend`` names the :data:`EMBEDDER_BACKENDS` entry to use for a single model whose
    file name does not tell (a temporary file); ``options`` go to the backend (``threads=``,
    ``providers=`` for onnx; ``threads=`` for torch). ``siamface.load`` wraps this for the
    Python API."""
    base, tta = split_tta(str(spec))
    p = Path(base).expanduser()

    def member(s: str) -> Embedder:
        return create_embedder(s, device=device, **options)

    if p.exists() or "+" not in base:
        if is_fusion_file(p):
            return open_fusion(p, member, tta)
        model = _create_single(base, device, card, backend, options)
        return FlipEmbedder(model) if tta == "flip" else model
    names = [m.strip() for m in base.split("+")]
    if any(not m for m in names) or len(names) < 2:
        raise SiamfaceError(f"a fusion is MODEL+MODEL[+...], got {base!r}")
    if card is not None:
        raise SiamfaceError("--card applies to one ONNX file; put cards beside fused members")
    if backend is not None:
        raise SiamfaceError(f"backend={backend!r} applies to one model file, not a fusion")
    shipped = packaged_fusion(names)
    if shipped is not None:
        return open_fusion(shipped, member, tta, label=base)
    members = [member(m if tta == "none" else f"{m}:tta={tta}") for m in names]
    return equal_fusion(members, base, tta)


def backend_for(spec: str) -> str:
    """The backend that runs one (non-fused) model spec: by file suffix for files (torch for
    checkpoints and run folders), by name for built-in models."""
    p = Path(spec).expanduser()
    if p.exists():
        for entry in EMBEDDER_BACKENDS:
            if p.suffix in entry.facts.get("suffixes", ()):
                return entry.name
        return "torch"
    named = _named_models()
    if spec in named:
        return named[spec]
    names = builtin_model_names()
    if spec in names:
        return "torch"
    raise SiamfaceError(f"model not found: {p} (built-in models: {', '.join(names)})")


def _create_single(
    spec: str, device: str, card: str | Path | None, backend: str | None, options: dict
) -> Embedder:
    p = Path(spec).expanduser()
    if card is not None and p.suffix != ".onnx" and backend != "onnx":
        raise SiamfaceError(f"--card describes a third-party .onnx file, not {spec}")
    entry = EMBEDDER_BACKENDS.get(backend or backend_for(spec))
    kwargs = dict(options, card=card) if entry.facts.get("card") else dict(options)
    target = p if p.exists() else spec
    try:
        builder = entry.builder
    except ImportError as err:
        needs, install = entry.facts.get("needs", entry.name), entry.facts.get("install", "")
        raise SiamfaceError(f"cannot run {target}: {needs} is missing ({err}); {install}") from err
    return builder(target, device=device, **kwargs)
