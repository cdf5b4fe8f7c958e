"""The decision threshold as one value: the cosine it decides at and where it came from.

A threshold is only meaningful together with its provenance: a checkpoint's was calibrated on
validation identities at a target false-accept rate, a gallery's was set by its owner, a
command-line one was given for this run. Before this type the threshold travelled as a raw
dict read by key (``rec["value"]``, ``rec.get("source")``) or as a bare float, and each
holder re-derived the human line and re-checked the range. :class:`Threshold` is parsed once
from whatever a file stores (checkpoint and ONNX headers, fusion files, model cards, gallery
settings, old files included), checked once (:func:`~siamface.model.validate.check_threshold`,
the one spelling of the [-1, 1] rule, kept in the model layer because model files are checked
there before anything above can run), and describes itself for answers and logs.

The on-disk and JSON forms are unchanged: a stored record is kept as read and written back
byte for byte by :meth:`Threshold.to_record`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from siamface.model.validate import check_threshold

if TYPE_CHECKING:
    from siamface.scores.metrics import VerificationMetrics

__all__ = ["Origin", "Threshold"]

#: Who set the threshold: given for this call/run, stored with the model, or the gallery's own.
Origin = Literal["given", "model", "gallery"]


@dataclass(frozen=True)
class Threshold:
    """A decision threshold: ``score >= value`` means the same person (1:1) or a known one
    (1:N). ``target_far``, ``method`` and ``source`` say how it was chosen (calibrated at a
    false-accept rate, best accuracy...) and on what data; for a gallery's, ``source`` is the
    gallery's location."""

    value: float
    origin: Origin = "model"
    target_far: float | None = None
    method: str | None = None
    source: str | None = None
    #: The stored record exactly as read or written (key order included), so that a model
    #: file, a fusion file or a JSON answer carries the same bytes as before.
    record: Mapping[str, object] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", check_threshold(self.value))

    # ------------------------------------------------------------------ making one
    @classmethod
    def given(cls, value: object, what: str = "threshold", source: str | None = None) -> Threshold:
        """A threshold given for this run (``--threshold``, ``?threshold=``, ``load(...,
        threshold=)``); strings are parsed, anything outside [-1, 1] is refused. ``source``
        replaces the plain 'given' where it says more ('given to load()')."""
        return cls(check_threshold(value, what), origin="given", source=source)

    @classmethod
    def of_gallery(cls, value: object, location: object) -> Threshold:
        """A gallery's open-set threshold (stored there as a bare number)."""
        return cls(check_threshold(value, "gallery threshold"), "gallery", source=str(location))

    @classmethod
    def parse(cls, stored: object, what: str = "threshold") -> Threshold | None:
        """Whatever a file stores as its threshold -> a :class:`Threshold`, or None for none.

        Accepts a record ``{"value", "target_far", "method", "source", ...}`` (checkpoints, ONNX
        metadata, fusion files; a record whose ``value`` is null means no threshold, as old
        files wrote), a bare number (galleries, model cards) or an existing Threshold.
        """
        if stored is None or isinstance(stored, Threshold):
            return stored
        if not isinstance(stored, Mapping):
            return cls(check_threshold(stored, what))
        if stored.get("value") is None:
            return None
        far = stored.get("target_far")
        method, source = stored.get("method"), stored.get("source")
        return cls(
            check_threshold(stored["value"], f"{what}.value"),
            target_far=None if far is None else float(far),
            method=None if method is None else str(method),
            source=None if source is None else str(source),
            record=dict(stored),
        )

    @classmethod
    def at_far(cls, m: VerificationMetrics, target_far: float, source: str) -> Threshold:
        """The threshold a calibration stores: at ``target_far`` when measurable with this
        many impostor pairs, else at the EER, and said so in ``method``. ``m`` must have been
        computed with ``target_far`` among its FARs."""
        from siamface.scores.metrics import far_key  # lazy: sklearn, for galleries and --help

        key = far_key(target_far)
        thr = m.threshold_at_far.get(key)
        if thr is not None:
            value, tar, method = thr, m.tar_at_far[key], "far"
        else:
            value, tar = m.eer_threshold, 1.0 - m.eer
            method = "eer (target FAR not measurable with this many impostor pairs)"
        return cls.parse(
            {
                "value": value,
                "target_far": target_far,
                "tar": tar,
                "method": method,
                "source": source,
                "n_impostor": m.n_impostor,
            }
        )

    def with_fields(self, **fields: object) -> Threshold:
        """The same threshold with more recorded facts (measured TAR/FAR, calibration date,
        a note), added to its stored record in order."""
        return replace(self, record={**self.to_record(), **fields})

    # ------------------------------------------------------------------ using one
    def accepts(self, score: float) -> bool:
        """The decision rule, everywhere: a score at the threshold is accepted."""
        return bool(score >= self.value)

    def describe(self) -> str:
        """Where the threshold came from, in one line: 'given', 'gallery staff', or for a
        stored one 'checkpoint: FAR 1e-03 on validation identities'."""
        if self.origin == "given":
            return self.source or "given"
        if self.origin == "gallery":
            return f"gallery {self.source}"
        parts = []
        if self.target_far is not None and self.method in (None, "far"):
            parts.append(f"FAR {self.target_far:g}")
        elif self.method:
            parts.append(self.method)
        if self.source:
            parts.append(f"on {self.source}")
        return "checkpoint" + (": " + " ".join(parts) if parts else "")

    def to_record(self) -> dict:
        """The stored/JSON form: the record as read (or as calibrated); a given threshold is
        ``{"value", "source": "given", "method": "given"}``."""
        if self.record is not None:
            return dict(self.record)
        if self.origin == "given":
            return {"value": self.value, "source": self.source or "given", "method": "given"}
        rec: dict = {"value": self.value}
        for key in ("target_far", "method", "source"):
            if getattr(self, key) is not None:
                rec[key] = getattr(self, key)
        return rec
