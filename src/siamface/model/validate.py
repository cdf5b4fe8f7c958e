"""Refuse damaged or hand-edited model files as a whole, before anything uses them.

A model file is input like any other: it may be truncated, bit-flipped, edited by hand or
crafted. Every field a command relies on is checked here, once, for type and range, and the
tensors are checked against the architecture the header declares, so that each problem ends
in one line naming the file, the field and what to do, instead of a traceback deep inside
PyTorch, a meaningless "similarity nan", or a model file that makes ``verify`` allocate 23 GB
(``preprocessing.image_size`` is bounded).

What is checked:

* **header** (:func:`parse_header`, :func:`check_checkpoint_header`): JSON object, format and
  version, the model config (types of every field :class:`ModelConfig` declares, embedding
  size), preprocessing (input size within [16, 1024], mean/std, alignment settings), the
  decision threshold (a cosine similarity in [-1, 1]), and, for files written since this
  check exists, an ``integrity`` digest over fingerprint + model + preprocessing, so an edited
  architecture or input contract is caught even when the tensors happen to fit.
* **weights** (:func:`check_weights`): the declared architecture is built on PyTorch's
  ``meta`` device (no memory, no weights; works for any network ``build_model`` can build) and
  its tensor names, shapes and kinds are compared with the file's; every floating tensor must
  be finite; the weights must match the fingerprint recorded in the header.
* **ONNX metadata** (:func:`check_onnx_metadata`) with the same field rules.

This module imports torch only inside :func:`check_weights`, so the torch-free ONNX backend
can use the header checks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from siamface.errors import SiamfaceError
from siamface.tensors.transforms import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

#: Largest embedding size a header may declare (real models use 128-2048).
MAX_EMBEDDING_SIZE = 65536
_REMEDY = (
    "the file is damaged or was edited; use the original file, or write a new one with "
    "siamface train/import/calibrate/export"
)
_SHOW = 5


class ModelFileError(SiamfaceError):
    """A model file (checkpoint or ONNX export) that cannot be used as it is."""


def _fail(path: Path | str, what: str) -> ModelFileError:
    return ModelFileError(f"{path}: {what}; {_REMEDY}")


# ----------------------------------------------------------------------------- scalar rules
def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_in(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


#: The range of a decision threshold: a cosine similarity.
MIN_THRESHOLD, MAX_THRESHOLD = -1.0, 1.0


def check_threshold(value: object, what: str = "threshold") -> float:
    """A decision threshold: a finite cosine similarity in [-1, 1]. The one spelling of the
    rule: model headers, model cards, galleries, the CLI, the API and the server all come
    here (through :class:`~siamface.decide.threshold.Threshold` above this layer), so a
    threshold refused by one is refused by all. Text is parsed (command lines, query
    strings); booleans are not numbers. Raises :class:`SiamfaceError` otherwise."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise SiamfaceError(f"{what} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SiamfaceError(f"{what} must be a number, got {value!r}")
    if not MIN_THRESHOLD <= float(value) <= MAX_THRESHOLD:  # also refuses NaN
        raise SiamfaceError(f"{what} is a cosine similarity in [-1, 1], got {value}")
    return float(value)


def parse_header(raw: object, path: Path | str, what: str = "header") -> dict:
    """The JSON text of a header -> a dict, or a one-line error."""
    if not isinstance(raw, str):
        raise _fail(path, f"the siamface {what} is not text")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise _fail(path, f"the siamface {what} is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise _fail(path, f"the siamface {what} is a JSON {type(meta).__name__}, not an object")
    return meta


def _section(meta: Mapping, key: str, path: Path | str, required: bool = True) -> dict | None:
    if key not in meta or meta[key] is None:
        if required:
            raise _fail(path, f"header field '{key}' is missing")
        return None
    if not isinstance(meta[key], dict):
        raise _fail(path, f"header field '{key}' must be a JSON object, got {meta[key]!r:.80}")
    return meta[key]


def check_format(meta: Mapping, path: Path | str, fmt: str, max_version: int) -> None:
    if meta.get("format") != fmt:
        raise _fail(path, f"header field 'format' is {meta.get('format')!r:.80}, not {fmt!r}")
    v = meta.get("format_version")
    if not _int_in(v, 1, 10**6):
        raise _fail(path, f"header field 'format_version' must be a positive integer, got {v!r}")
    if v > max_version:
        raise SiamfaceError(
            f"{path}: written by a newer siamface (format version {v}, this one reads up to "
            f"{max_version}); upgrade siamface"
        )


def check_preprocessing(pre: Mapping, path: Path | str, prefix: str = "preprocessing") -> None:
    """Types and ranges of a :class:`~siamface.tensors.transforms.Preprocessing` record."""
    size = pre.get("image_size")
    if not _int_in(size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE):
        raise _fail(
            path,
            f"header field '{prefix}.image_size' must be an integer in "
            f"[{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {size!r:.80}",
        )
    for key, lo in (("mean", -100.0), ("std", 1e-4)):
        if key not in pre:
            continue
        v = pre[key]
        ok = (
            isinstance(v, (list, tuple))
            and len(v) == 3
            and all(_is_number(x) and math.isfinite(x) and lo <= x <= 100.0 for x in v)
        )
        if not ok:
            rule = "> 0" if key == "std" else "finite"
            raise _fail(
                path, f"header field '{prefix}.{key}' must be 3 numbers ({rule}), got {v!r:.80}"
            )
    if "aligned" in pre and not isinstance(pre["aligned"], bool):
        raise _fail(path, f"header field '{prefix}.aligned' must be true or false")
    align = pre.get("align", {})
    if not isinstance(align, dict):
        raise _fail(path, f"header field '{prefix}.align' must be a JSON object")
    from siamface.faces.align import AlignParams  # lazy: PIL

    try:
        AlignParams.from_dict(align)
    except (SiamfaceError, TypeError, ValueError) as err:
        raise _fail(path, f"header field '{prefix}.align': {err}") from err


def check_threshold_record(rec: object, path: Path | str, key: str = "threshold") -> None:
    if rec is None:
        return
    if not isinstance(rec, dict):
        raise _fail(path, f"header field '{key}' must be a JSON object or null")
    if rec.get("value") is not None:
        if isinstance(rec["value"], str):
            raise _fail(path, f"header field '{key}.value' must be a number, not a string")
        try:
            check_threshold(rec["value"], f"header field '{key}.value'")
        except SiamfaceError as err:
            raise _fail(path, str(err)) from err
    for k in ("target_far", "far", "tar"):
        v = rec.get(k)
        if v is not None and not (_is_number(v) and 0.0 <= v <= 1.0):
            raise _fail(path, f"header field '{key}.{k}' must be a rate in [0, 1], got {v!r:.80}")


def check_pair_head_params(params: object, path: Path | str, key: str = "pair_head") -> None:
    """The two scalars of the BCE pair head as exported to ONNX metadata."""
    if params is None:
        return
    if not (isinstance(params, dict) and set(params) == {"scale", "bias"}):
        raise _fail(path, f"'{key}' must be an object with exactly 'scale' and 'bias'")
    for k, v in params.items():
        if not (_is_number(v) and math.isfinite(v)):
            raise _fail(path, f"'{key}.{k}' must be a finite number, got {v!r:.80}")


def contract_digest(meta: Mapping) -> str:
    """Digest of what must never change without the weights changing too: the fingerprint,
    the architecture and the input contract. Stored as ``integrity`` by ``save_checkpoint``;
    a mismatch means the header was edited after the file was written."""
    core = {k: meta.get(k) for k in ("fingerprint", "model", "preprocessing")}
    text = json.dumps(core, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_model_section(model: Mapping, path: Path | str) -> None:
    """Every field :class:`ModelConfig` declares, by its annotated type; any network."""
    from siamface.model.network import ModelConfig  # lazy: torch, torchvision

    types = {"str": str, "int": int, "float": (int, float), "bool": bool}
    for f in fields(ModelConfig):
        required = f.default is MISSING and f.default_factory is MISSING
        if f.name not in model:
            if required or f.name in ("backbone", "embedding_size"):
                raise _fail(path, f"header field 'model.{f.name}' is missing")
            continue
        v = model[f.name]
        typ = str(f.type).replace(" | None", "")
        optional = "None" in str(f.type)
        want = types.get(typ)
        if want is None or (v is None and optional):
            continue  # a structured field: left to ModelConfig.from_dict below
        if not isinstance(v, want) or (typ in ("int", "float") and isinstance(v, bool)):
            raise _fail(path, f"header field 'model.{f.name}' must be {typ}, got {v!r:.80}")
        if typ == "float" and not math.isfinite(v):
            raise _fail(path, f"header field 'model.{f.name}' must be finite, got {v!r}")
    if not model["backbone"].strip():
        raise _fail(path, "header field 'model.backbone' is empty")
    if not _int_in(model["embedding_size"], 1, MAX_EMBEDDING_SIZE):
        raise _fail(
            path,
            f"header field 'model.embedding_size' must be in [1, {MAX_EMBEDDING_SIZE}], got "
            f"{model['embedding_size']!r}",
        )
    if not 0.0 <= float(model.get("drop_rate", 0.0)) < 1.0:
        raise _fail(path, "header field 'model.drop_rate' must be in [0, 1)")
    try:
        ModelConfig.from_dict(dict(model))
    except SiamfaceError as err:
        raise _fail(path, f"header field 'model': {err}") from err
    except (KeyError, TypeError, ValueError) as err:
        raise _fail(path, f"header field 'model' is invalid ({type(err).__name__}: {err})") from err


def check_checkpoint_header(meta: dict, path: Path | str, fmt: str, max_version: int) -> dict:
    """Every header field a command reads, for type and range; returns ``meta``."""
    check_format(meta, path, fmt, max_version)
    model = _section(meta, "model", path)
    assert model is not None
    _check_model_section(model, path)
    pre = _section(meta, "preprocessing", path)
    assert pre is not None
    check_preprocessing(pre, path)
    check_threshold_record(meta.get("threshold"), path)
    _section(meta, "info", path, required=False)
    for key, typ in (("fingerprint", str), ("integrity", str), ("has_pair_head", bool)):
        if key in meta and not isinstance(meta[key], typ):
            raise _fail(path, f"header field '{key}' must be {typ.__name__}")
    if "integrity" in meta and meta["integrity"] != contract_digest(meta):
        raise _fail(
            path,
            "the model, preprocessing or fingerprint fields were changed after the file was "
            "written (integrity digest mismatch)",
        )
    return meta


# ----------------------------------------------------------------------------- weights
def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


@dataclass(frozen=True)
class _Spec:
    shape: tuple[int, ...]
    dtype: str
    floating: bool


def _expected_state(build) -> dict[str, _Spec]:
    """Tensor names, shapes and kinds of a freshly built network, built on the meta device
    when it can be (no memory, no random init), else on the CPU."""
    import torch  # noqa: PLC0415

    try:
        with torch.device("meta"):
            sd = build().state_dict()
    except SiamfaceError:
        raise
    except Exception:  # noqa: BLE001 - a network that cannot live on 'meta' is built for real
        sd = build().state_dict()
    return {k: _Spec(tuple(v.shape), str(v.dtype), v.is_floating_point()) for k, v in sd.items()}


@functools.lru_cache(maxsize=16)
def expected_model_state(model_cfg: Any) -> dict[str, _Spec]:
    """What a checkpoint of ``model_cfg`` must hold (cached: a server or a test session
    loads the same architecture many times; building it is most of the check's cost)."""
    from siamface.model.network import build_model  # lazy: torch, torchvision

    return _expected_state(lambda: build_model(model_cfg))


def _compare(expected: Mapping, got: Mapping, path: Path | str, prefix: str, declared: str) -> None:
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_listing(prefix + k for k in missing)})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({_listing(prefix + k for k in extra)})")
        raise _fail(path, f"tensors do not match the declared {declared}: " + "; ".join(parts))
    for k, exp in expected.items():
        t = got[k]
        if tuple(t.shape) != exp.shape:
            raise _fail(
                path,
                f"tensor {prefix}{k} has shape {list(t.shape)}, the declared {declared} needs "
                f"{list(exp.shape)}",
            )
        if t.is_floating_point() != exp.floating:
            raise _fail(path, f"tensor {prefix}{k} has dtype {t.dtype}, expected {exp.dtype}")


def _check_finite(tensors: Mapping, path: Path | str, prefix: str) -> None:
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    for k, t in tensors.items():
        if t.is_floating_point():
            # numpy, not torch: one pass per tensor without thread-pool start-up, ~50x
            # faster on the few hundred small tensors of a typical checkpoint.
            a = t.detach().cpu()
            arr = (a.float() if a.dtype == torch.bfloat16 else a).numpy()
            finite = np.isfinite(arr)
            bad = 0 if finite.all() else int(arr.size - np.count_nonzero(finite))
            if bad:
                raise _fail(
                    path,
                    f"tensor {prefix}{k} holds {bad} non-finite value(s) (NaN or Inf) of "
                    f"{t.numel()}: the weights are unusable",
                )


def check_weights(
    model_cfg: Any,
    state_dict: Mapping,
    pair_head: Mapping | None,
    path: Path | str,
    meta: Mapping | None = None,
    stray: Sequence[str] = (),
    fingerprint: str | None = None,
) -> None:
    """Tensors against the declared architecture, finiteness, and the header's fingerprint.

    ``stray``: tensor names in the file that belong to neither the network nor the pair head.
    ``fingerprint``: the weights' fingerprint, compared with ``meta['fingerprint']``.
    """
    from siamface.model.network import PairHead  # lazy: torch, torchvision

    if stray:
        raise _fail(path, f"unexpected tensors in the file: {_listing(stray)}")
    declared = f"model ({model_cfg.backbone}, {model_cfg.embedding_size}-d)"
    try:
        expected = expected_model_state(model_cfg)
    except SiamfaceError as err:
        raise _fail(path, f"the model declared in the header cannot be built: {err}") from err
    _compare(expected, state_dict, path, "model.", declared)
    _check_finite(state_dict, path, "model.")
    meta = meta or {}
    if pair_head:
        _compare(_expected_state(PairHead), pair_head, path, "pair_head.", "pair head")
        _check_finite(pair_head, path, "pair_head.")
    if meta.get("has_pair_head") is True and not pair_head:
        raise _fail(path, "the header declares a pair head but the file holds none")
    declared_fp = meta.get("fingerprint")
    if fingerprint is not None and declared_fp is not None and declared_fp != fingerprint:
        raise _fail(
            path,
            f"the weights (fingerprint {fingerprint}) are not the ones the header records "
            f"({declared_fp}): the tensors were changed after the file was written",
        )


# ----------------------------------------------------------------------------- ONNX
def check_onnx_metadata(meta: dict, path: Path | str, fmt: str, max_version: int) -> dict:
    """The siamface record inside an exported ``.onnx`` file, with the checkpoint rules."""
    check_format(meta, path, fmt, max_version)
    pre = _section(meta, "preprocessing", path)
    assert pre is not None
    check_preprocessing(pre, path)
    if not _int_in(meta.get("embedding_size"), 1, MAX_EMBEDDING_SIZE):
        raise _fail(
            path,
            f"metadata field 'embedding_size' must be an integer in [1, {MAX_EMBEDDING_SIZE}], "
            f"got {meta.get('embedding_size')!r:.80}",
        )
    if not isinstance(meta.get("fingerprint"), str) or not meta["fingerprint"]:
        raise _fail(path, "metadata field 'fingerprint' must be a non-empty string")
    check_threshold_record(meta.get("threshold"), path)
    check_pair_head_params(meta.get("pair_head"), path)
    _section(meta, "info", path, required=False)
    return meta
