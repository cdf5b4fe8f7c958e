"""Model cards: the input contract of a face-recognition ONNX file that siamface did not make.

A third-party ONNX file (OpenCV Zoo's SFace, an InsightFace pack's recogniser, a model a user
exported themselves) is just a graph: nothing in it says whether it wants RGB or BGR, which
mean/std, which face crop, or what licence it carries. A *model card* says so, in a few lines of
YAML or JSON, kept beside the file as ``<file>.card.yaml`` (or ``.card.json``) or given on the
command line (``--card FILE``). Only what the graph cannot tell is asked for: the input size is
read from the graph when the graph fixes it (a card that disagrees is refused).

Example (OpenCV Zoo's SFace, whose graph normalises its own input)::

    name: sface-opencv-zoo
    colour_order: rgb           # rgb | bgr: channel order the network expects
    mean: 0                     # subtracted per channel, in 0-255 pixel units
    std: 1                      # divided per channel, in 0-255 pixel units
    alignment: arcface          # arcface (5-point, InsightFace template) | none (tight crops)
    margin: 0.0                 # extra context around the template face (arcface only)
    layout: nchw                # nchw | nhwc
    output: embedding           # what the graph returns; siamface L2-normalises it
    threshold: 0.363            # optional decision threshold (cosine), with its source
    centre: [0.01, -0.03, ...]  # optional mean face subtracted before the last normalisation
                                # (siamface centre writes it, with its threshold)
    threshold_source: OpenCV Zoo's published value (LFW)
    license: Apache-2.0
    provenance: https://github.com/opencv/opencv_zoo (face_recognition_sface, 2021dec)

What is checked at load: the input size against the graph, the layout against the graph's
channel axis, every key and value. What cannot be checked there (a wrong colour order or
mean/std still gives unit vectors) shows on labelled faces: ``siamface evaluate`` with each
candidate card (docs/models.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from siamface.errors import SiamfaceError
from siamface.model.validate import check_threshold

#: Card file names looked for beside ``model.onnx`` (first found wins).
CARD_SUFFIXES = (".card.yaml", ".card.yml", ".card.json")
COLOUR_ORDERS = ("rgb", "bgr")
ALIGNMENTS = ("arcface", "none")
LAYOUTS = ("nchw", "nhwc")
OUTPUTS = ("embedding", "normalized")
#: Keys a card may have; anything else is a typo and is refused (a silently ignored
#: ``color_order`` would leave the default in force).
KNOWN_KEYS = (
    "name",
    "description",
    "input_size",
    "colour_order",
    "mean",
    "std",
    "alignment",
    "margin",
    "layout",
    "output",
    "output_name",
    "threshold",
    "threshold_source",
    "centre",
    "license",
    "provenance",
)
ALIASES = {
    "color_order": "colour_order",
    "source": "provenance",
    "licence": "license",
    "center": "centre",
}


@dataclass(frozen=True)
class ModelCard:
    """The validated contents of a model card (see the module docstring for each key)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = ""
    description: str = ""
    input_size: int | None = None
    colour_order: str = "rgb"
    alignment: str = "arcface"
    margin: float = 0.0
    layout: str = "nchw"
    output: str = "embedding"
    output_name: str | None = None
    threshold: float | None = None
    threshold_source: str = ""
    centre: tuple[float, ...] | None = None
    license: str = ""
    provenance: str = ""
    path: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["centre"] = None if self.centre is None else list(self.centre)
        return d

    def contract(self) -> dict:
        """The fields that change the embeddings (part of the model's fingerprint)."""
        d = self.to_dict()
        keep = ("input_size", "colour_order", "mean", "std", "alignment", "margin", "layout")
        if self.centre is not None:  # cards without one keep their fingerprints
            keep += ("centre",)
        return {k: d[k] for k in keep}


def _triple(value: object, key: str, where: str) -> tuple[float, float, float]:
    vals = value if isinstance(value, list | tuple) else [value]
    try:
        out = [float(v) for v in vals]
    except (TypeError, ValueError):
        msg = f"{where}: {key} must be a number or 3 numbers, got {value!r}"
        raise SiamfaceError(msg) from None
    if len(out) == 1:
        out = out * 3
    if len(out) != 3:
        raise SiamfaceError(f"{where}: {key} must be a number or 3 numbers, got {value!r}")
    return (out[0], out[1], out[2])


def _choice(d: dict, key: str, choices: tuple[str, ...], default: str, where: str) -> str:
    v = str(d.get(key, default)).lower()
    if v not in choices:
        raise SiamfaceError(f"{where}: {key} must be one of {', '.join(choices)}, got {v!r}")
    return v


def card_from_dict(raw: dict, where: str = "model card") -> ModelCard:
    """Validate a card's mapping; every mistake is one line naming the key."""
    if not isinstance(raw, dict):
        raise SiamfaceError(f"{where}: a model card is a mapping of keys, got {type(raw).__name__}")
    d = {ALIASES.get(k, k): v for k, v in raw.items()}
    unknown = sorted(set(d) - set(KNOWN_KEYS))
    if unknown:
        raise SiamfaceError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KNOWN_KEYS)}"
        )
    for key in ("mean", "std"):
        if key not in d:
            raise SiamfaceError(
                f"{where}: {key} is required (0-255 pixel units, e.g. mean 127.5 std 127.5 for "
                "ArcFace-style models, or mean 0 std 1 when the graph normalises itself)"
            )
    std = _triple(d["std"], "std", where)
    if any(s <= 0 for s in std):
        raise SiamfaceError(f"{where}: std must be positive, got {list(std)}")
    size = d.get("input_size")
    if size is not None:
        try:
            size = int(size)
        except (TypeError, ValueError):
            raise SiamfaceError(f"{where}: input_size must be an integer, got {size!r}") from None
        if not 16 <= size <= 1024:
            raise SiamfaceError(f"{where}: input_size must be 16..1024, got {size}")
    thr = d.get("threshold")
    if thr is not None:
        thr = check_threshold(thr, f"{where}: threshold")
    try:
        margin = float(d.get("margin", 0.0))
    except (TypeError, ValueError):
        raise SiamfaceError(f"{where}: margin must be a number") from None
    centre = _centre(d.get("centre"), where)
    return ModelCard(
        mean=_triple(d["mean"], "mean", where),
        std=std,
        name=str(d.get("name", "")),
        description=str(d.get("description", "")),
        input_size=size,
        colour_order=_choice(d, "colour_order", COLOUR_ORDERS, "rgb", where),
        alignment=_choice(d, "alignment", ALIGNMENTS, "arcface", where),
        margin=margin,
        layout=_choice(d, "layout", LAYOUTS, "nchw", where),
        output=_choice(d, "output", OUTPUTS, "embedding", where),
        output_name=str(d["output_name"]) if d.get("output_name") else None,
        threshold=thr,
        threshold_source=str(d.get("threshold_source", "")),
        centre=centre,
        license=str(d.get("license", "")),
        provenance=str(d.get("provenance", "")),
        path=where,
    )


def _centre(value: object, where: str) -> tuple[float, ...] | None:
    """The optional mean face: a list of finite numbers (its length is checked against the
    model's output when the model is opened)."""
    if value is None:
        return None
    import math

    try:
        vals = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise SiamfaceError(f"{where}: centre must be a list of numbers") from None
    if len(vals) < 2 or not all(math.isfinite(v) for v in vals):
        raise SiamfaceError(f"{where}: centre must be two or more finite numbers")
    return vals


def read_card(path: str | Path) -> ModelCard:
    """Read a YAML or JSON card file."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SiamfaceError(f"cannot read model card {path}: {err.strerror or err}") from err
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - yaml and json raise their own types
        raise SiamfaceError(f"model card {path} is not valid YAML/JSON: {err}") from err
    return card_from_dict(raw, str(path))


def card_beside(model: str | Path) -> Path | None:
    """``model.onnx.card.yaml`` / ``model.card.yaml`` (and .yml/.json) when one exists."""
    model = Path(model)
    for suffix in CARD_SUFFIXES:
        for candidate in (model.with_name(model.name + suffix), model.with_suffix(suffix)):
            if candidate.is_file():
                return candidate
    return None


def write_card(card: ModelCard, path: str | Path) -> Path:
    """Write ``card`` as YAML (or JSON for a ``.json`` path), without the ``path`` field."""
    import yaml

    from siamface.fileio import atomic_write  # a card rewritten in place is never half written

    path = Path(path)
    d = {k: v for k, v in card.to_dict().items() if k != "path" and v not in (None, "")}
    text = json.dumps(d, indent=2) if path.suffix == ".json" else yaml.safe_dump(d, sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
