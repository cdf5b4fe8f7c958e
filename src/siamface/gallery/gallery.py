"""The face gallery interface: enroll people, remove them, list them, identify probes (1:N).

:class:`Gallery` is what every caller uses; where the people and vectors live is a backend
(a subclass), chosen from the gallery's *spec* by :func:`siamface.gallery.open_gallery`:

* a folder path -> ``builtin``: SQLite + a derived faiss index, nothing to run
  (:mod:`siamface.gallery.builtin`);
* ``milvus://HOST:PORT/COLLECTION`` or ``http(s)://HOST:PORT/COLLECTION`` -> ``milvus``: a
  Milvus server (Standalone, Distributed, Zilliz, or milvus-lite's server) through pymilvus
  (:mod:`siamface.gallery.milvus`).

This base class does the plumbing that must not differ between backends: validating names,
vectors, settings and thumbnails; refusing another model's embeddings; the open-set
decision at the threshold; duplicate-file warnings. A backend implements storage and
nearest-neighbour search (the ``_`` methods and the listings).

Search is open-set: the best match is reported as ``"unknown"`` when its cosine similarity
is below the gallery's threshold (by default the model's calibrated 1:1 threshold), so a
stranger is rejected instead of being matched to the nearest enrolled person.

Several images per person can be searched two ways (``aggregation``): ``"mean"`` indexes
one normalised mean template per person, ``"max"`` indexes every image and scores a person
by their best image. ``siamface evaluate-1n`` measures both on your data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

import numpy as np

from siamface.decide.open_set import UNKNOWN, Candidate, Match, SearchResult, decide_open_set
from siamface.decide.threshold import Threshold
from siamface.errors import SiamfaceError
from siamface.gallery.records import NewPerson, PersonRecord
from siamface.gallery.validation import (
    AGGREGATIONS,
    DEFAULT_AGGREGATION,
    ModelMismatchError,
    check_choice,
    check_top_k,
    checked_person,
    unit_vectors,
)
from siamface.gallery.vectors import mean_template
from siamface.names import lookalike_error, lookalike_of, normal_name, skeleton

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_AGGREGATION",
    "UNKNOWN",
    "Gallery",
    "Match",
    "ModelMismatchError",
    "SearchResult",
    "template_of",
]


class Gallery(ABC):
    """A gallery opened for reading and writing, whatever stores it. Thread-safe.

    Open one with :meth:`open` / :meth:`create` (or :func:`siamface.gallery.open_gallery`):
    on this base class they pick the backend from the spec; on a backend class they use it.
    """

    #: registry name (``builtin``, ``milvus``)
    backend: ClassVar[str]
    #: index kinds the backend accepts in ``set_index_kind`` (besides ``auto``)
    index_kinds: ClassVar[tuple[str, ...]] = ()
    #: where the gallery is, for messages and ``info()["path"]``
    location: str

    # -- opening (dispatch on the spec) ---------------------------------------------------
    @classmethod
    def _backend(cls, spec: object) -> type[Gallery]:
        if cls is not Gallery:
            return cls
        from siamface.gallery.backends import (
            backend_for,
        )  # lazy: cycle, backends registers subclasses of this class

        return backend_for(spec)

    @classmethod
    def create(
        cls,
        spec: object,
        *,
        fingerprint: str,
        embedding_size: int,
        threshold: Threshold | float | None = None,
        model_source: str | None = None,
        aggregation: str = DEFAULT_AGGREGATION,
        index_kind: str = "auto",
        index_params: dict | None = None,
    ) -> Gallery:
        """Make a new, empty gallery for embeddings of one model."""
        backend = cls._backend(spec)
        check_choice("aggregation", aggregation, AGGREGATIONS)
        check_choice("index kind", index_kind, ("auto", *backend.index_kinds))
        if not (
            isinstance(embedding_size, int)
            and not isinstance(embedding_size, bool)
            and 0 < embedding_size <= 65536
        ):
            raise SiamfaceError(f"embedding size must be a positive integer, got {embedding_size}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise SiamfaceError(
                f"the model fingerprint must be a non-empty string: {fingerprint!r}"
            )
        settings = {
            "fingerprint": fingerprint,
            "embedding_size": embedding_size,
            "threshold": _stored(threshold),
            "model_source": None if model_source is None else str(model_source),
            "aggregation": aggregation,
            "index_kind": index_kind,
            "index_params": dict(index_params or {}),
        }
        return backend._create(spec, settings)

    @classmethod
    def open(cls, spec: object) -> Gallery:
        """Open an existing gallery (clear errors when missing, damaged or unreachable)."""
        return cls._backend(spec)._open(spec)

    @classmethod
    def exists(cls, spec: object) -> bool:
        """Is there a gallery at ``spec``? (False for an empty folder or a missing collection.)"""
        return cls._backend(spec)._exists(spec)

    @classmethod
    @abstractmethod
    def _create(cls, spec: object, settings: dict) -> Gallery: ...

    @classmethod
    @abstractmethod
    def _open(cls, spec: object) -> Gallery: ...

    @classmethod
    @abstractmethod
    def _exists(cls, spec: object) -> bool: ...

    def close(self) -> None:  # noqa: B027 - backends release connections or files here
        """Release the backend's resources (files, connections)."""

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- settings -------------------------------------------------------------------------
    @abstractmethod
    def _settings(self, fresh: bool = False) -> dict:
        """The validated settings: fingerprint, embedding_size, threshold, model_source,
        aggregation, index_kind, index_params, version. ``fresh``: re-read the store."""

    @abstractmethod
    def _set_settings(self, **values: object) -> None:
        """Write settings (validated by the caller); rebuild the index if the unit or kind
        changed."""

    @property
    def fingerprint(self) -> str:
        return self._settings()["fingerprint"]

    @property
    def embedding_size(self) -> int:
        return int(self._settings()["embedding_size"])

    @property
    def threshold(self) -> Threshold | None:
        """The open-set threshold set on this gallery (None: closed-set), re-read each time
        so that a ``gallery set`` from another process is seen."""
        value = self._settings(fresh=True)["threshold"]
        return None if value is None else Threshold.of_gallery(value, self.location)

    @property
    def aggregation(self) -> str:
        return self._settings(fresh=True)["aggregation"]

    @property
    def model_source(self) -> str | None:
        return self._settings()["model_source"]

    @property
    def unit(self) -> str:
        """What the index holds: one vector per ``person`` (mean) or per ``image`` (max)."""
        return "person" if self.aggregation == "mean" else "image"

    def set_threshold(self, value: Threshold | float | None) -> None:
        """Set (or clear, with None) the open-set threshold on cosine similarity."""
        self._set_settings(threshold=_stored(value))

    def set_aggregation(self, mode: str) -> None:
        """Switch between mean templates and per-image search (the index is rebuilt)."""
        self._set_settings(aggregation=check_choice("aggregation", mode, AGGREGATIONS))

    def set_index_kind(self, kind: str, **params) -> None:
        """Pin the index kind (``auto`` = the backend's choice by size)."""
        check_choice("index kind", kind, ("auto", *self.index_kinds))
        self._set_settings(index_kind=kind, index_params=params)

    @abstractmethod
    def rebuild_index(self) -> None:
        """Rebuild the vector index from the stored embeddings."""

    # -- reading ---------------------------------------------------------------------------
    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """(people, images)."""

    def __len__(self) -> int:
        return self.counts()[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.person(normal_name(name)) is not None

    @abstractmethod
    def people(self) -> list[PersonRecord]:
        """Everyone enrolled, sorted by name."""

    @abstractmethod
    def person(self, name: str) -> PersonRecord | None: ...

    @abstractmethod
    def existing(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` are enrolled (one round trip per few hundred names)."""

    @abstractmethod
    def thumbnail(self, name: str) -> bytes | None:
        """The person's thumbnail (JPEG bytes), or None if none was stored or no such person."""

    @abstractmethod
    def export(self, names: Sequence[str]) -> list[NewPerson]:
        """Everything stored about ``names`` (exact image embeddings, refs, digests,
        metadata, thumbnail), to copy people into another gallery."""

    @abstractmethod
    def _backend_info(self) -> dict:
        """Backend-specific part of :meth:`info` (``index`` and where the data lives)."""

    def info(self) -> dict:
        """A summary for ``gallery list`` and the REST service."""
        s = self._settings(fresh=True)
        n_people, n_images = self.counts()
        return {
            "path": self.location,
            "backend": self.backend,
            "people": n_people,
            "images": n_images,
            "fingerprint": s["fingerprint"],
            "embedding_size": s["embedding_size"],
            "model_source": s["model_source"],
            "threshold": s["threshold"],
            "aggregation": s["aggregation"],
            "index_kind": s["index_kind"],
            "version": s["version"],
            **self._backend_info(),
        }

    @abstractmethod
    def _digests_elsewhere(self, digests: Sequence[str], name: str) -> dict[str, str]:
        """{digest: other person's name} for files already enrolled under another name."""

    def duplicates_elsewhere(self, people: Sequence[NewPerson]) -> list[dict]:
        """Files (by content digest) that are already enrolled, or given in this batch, under
        another name: usually a labelling mistake worth a warning."""
        out = []
        seen: dict[str, str] = {}
        for p in people:
            known = self._digests_elsewhere([d for d in p.digests if d], p.name)
            for d, ref in zip(p.digests, p.refs or [None] * len(p.digests), strict=False):
                other = known.get(d) if d else None
                if d and other is None and seen.get(d, p.name) != p.name:
                    other = seen[d]
                if other is not None:
                    out.append({"path": ref, "name": p.name, "other": other})
                if d:
                    seen.setdefault(d, p.name)
        return out

    # -- checks ------------------------------------------------------------------------------
    def check_model(self, fingerprint: str, embedding_size: int | None = None) -> None:
        """Refuse embeddings of another model (mixing models gives meaningless scores)."""
        s = self._settings()
        if embedding_size is not None and embedding_size != s["embedding_size"]:
            raise ModelMismatchError(
                f"the model gives {embedding_size}-d embeddings but gallery {self.location} "
                f"holds {s['embedding_size']}-d embeddings of model {s['fingerprint']}"
            )
        if fingerprint != s["fingerprint"]:
            src = f" ({s['model_source']})" if s["model_source"] else ""
            raise ModelMismatchError(
                f"gallery {self.location} was built with model {s['fingerprint']}{src}, but "
                f"these embeddings come from model {fingerprint}; use the gallery's model or "
                "enroll everyone again into a new gallery"
            )

    def _vectors(self, embeddings: np.ndarray, fingerprint: str, what: str) -> np.ndarray:
        emb = unit_vectors(embeddings, self.embedding_size, what, self.location)
        self.check_model(fingerprint)
        return emb

    # -- writing ---------------------------------------------------------------------------
    def enroll(
        self,
        name: str,
        embeddings: np.ndarray,
        refs: Sequence[str | None] = (),
        *,
        fingerprint: str,
        metadata: dict | None = None,
        digests: Sequence[str | None] = (),
        append: bool = False,
        thumbnail: bytes | None = None,
    ) -> PersonRecord:
        """Enroll one person from unit embeddings of their images (one row each).

        ``refs`` say where each image came from (kept for listing); ``append=True`` adds the
        images to an already enrolled person instead of refusing the duplicate name.
        ``thumbnail`` is a small JPEG of the first face (kept when appending to a person who
        already has one); see :mod:`siamface.gallery.thumbnail`.
        """
        person = NewPerson(name, embeddings, refs, digests, metadata or {}, thumbnail)
        return self.enroll_many([person], fingerprint=fingerprint, append=append)[0]

    def enroll_many(
        self, people: Sequence[NewPerson], *, fingerprint: str, append: bool = False
    ) -> list[PersonRecord]:
        """Enroll several people: all of them or, on any error found before writing, none
        (see the backend for what a crash mid-way leaves)."""
        self.check_model(fingerprint)
        dim = self.embedding_size
        people = [checked_person(p, dim, self.location) for p in people]
        if not people:
            raise SiamfaceError("nothing to enroll")
        dupes = sorted(n for n, c in Counter(p.name for p in people).items() if c > 1)
        if dupes:
            raise SiamfaceError(f"the same name is given twice in one enrollment: {dupes[:5]}")
        self._refuse_lookalikes([p.name for p in people])
        return self._enroll(people, append)

    def _refuse_lookalikes(self, names: list[str]) -> None:
        """Refuse a name that looks like another one (enrolled, or in the same batch) but is
        another string: they would be two people nobody can tell apart on the page."""
        seen: dict[str, str] = {}
        for n in names:
            other = seen.setdefault(skeleton(n), n)
            if other != n:
                raise lookalike_error(n, other)
        candidates = self._lookalike_candidates(names)
        for n in names:
            other = lookalike_of(n, candidates)
            if other is not None:
                raise lookalike_error(n, other)

    def _lookalike_candidates(self, names: list[str]) -> set[str]:
        """Enrolled names that may look like one of ``names``: those equal to a skeleton, and
        every name with a non-ASCII character (only those can look like another string)."""
        found = self.existing([skeleton(n) for n in names])
        return found | {p.name for p in self.people() if not p.name.isascii()}

    def _already_enrolled(self, existing: set[str]) -> SiamfaceError:
        shown = ", ".join(sorted(existing)[:5])
        return SiamfaceError(
            f"already enrolled in {self.location}: {shown}"
            f"{' ...' if len(existing) > 5 else ''} (remove them first, or add images to them "
            "with --append); nothing was enrolled"
        )

    @abstractmethod
    def _enroll(self, people: list[NewPerson], append: bool) -> list[PersonRecord]:
        """Write validated people (names unique in the batch); refuse names already
        enrolled unless ``append`` (then add their images and keep their thumbnail)."""

    def remove(self, names: str | Sequence[str]) -> list[str]:
        """Remove people (and their images). Unknown names are an error; nothing is removed
        unless every name exists."""
        names = [names] if isinstance(names, str) else list(names)
        names = [normal_name(n) for n in names]
        if not names:
            raise SiamfaceError("no name given to remove")
        names = list(dict.fromkeys(names))
        self._remove(names)
        return names

    def _not_enrolled(self, missing: Sequence[str]) -> SiamfaceError:
        return SiamfaceError(
            f"not enrolled in {self.location}: {', '.join(sorted(missing)[:5])}; nothing removed"
        )

    @abstractmethod
    def _remove(self, names: list[str]) -> None:
        """Remove these people (distinct names), or nobody if one is not enrolled."""

    # -- checking ----------------------------------------------------------------------------
    def check(self) -> list[dict]:
        """Every damaged stored record (``person``, ``kind``, ``problem``...); empty when all
        is sound. Backends that cannot check say so."""
        raise SiamfaceError(f"the {self.backend} backend cannot check its records")

    def repair(
        self, problems: list[dict], reembed: Callable[[str], np.ndarray | None] | None = None
    ) -> list[dict]:
        """Fix the problems :meth:`check` found (re-embed from stored images where possible,
        else drop); returns what was done."""
        raise SiamfaceError(f"the {self.backend} backend cannot repair its records")

    # -- searching ---------------------------------------------------------------------------
    def search(
        self,
        embeddings: np.ndarray,
        top_k: int = 5,
        *,
        fingerprint: str,
        threshold: Threshold | None = None,
        closed_set: bool = False,
    ) -> list[SearchResult]:
        """Identify each probe embedding: up to ``top_k`` people, best first, with their
        cosine similarity; ``identity`` is ``"unknown"`` when the best score is below the
        threshold: ``threshold`` when given, else the gallery's own. ``closed_set=True``
        decides without any threshold (the best match is always named; for rank metrics and
        for scoring a claimed identity)."""
        check_top_k(top_k)
        if closed_set and threshold is not None:
            raise SiamfaceError("a closed-set search takes no threshold")
        if threshold is not None and not isinstance(threshold, Threshold):
            raise SiamfaceError(
                f"threshold must be a Threshold (e.g. Threshold.given(0.4)), got {threshold!r}"
            )
        q = self._vectors(embeddings, fingerprint, "probe")
        thr = None if closed_set else threshold if threshold is not None else self.threshold
        return [decide_open_set(ranked, thr) for ranked in self._search(q, top_k)]

    @abstractmethod
    def _search(self, q: np.ndarray, top_k: int) -> list[list[Candidate]]:
        """Up to ``top_k`` distinct people per probe (unit rows of ``q``), best first, with
        accurate cosine scores (per person: template for mean, best image for max)."""

    def iter_names(self, batch: int = 1000) -> Iterator[list[str]]:
        """Everyone's name in sorted batches (for migration)."""
        names = [p.name for p in self.people()]
        for i in range(0, len(names), batch):
            yield names[i : i + batch]


def _stored(threshold: Threshold | float | None) -> float | None:
    """A gallery stores its threshold as a bare number (or null: closed-set)."""
    if threshold is None:
        return None
    if isinstance(threshold, Threshold):
        return threshold.value
    return Threshold.given(threshold).value


def template_of(embeddings: np.ndarray) -> np.ndarray:
    """Public helper: the mean template the gallery uses for a person's embeddings."""
    return mean_template(np.asarray(embeddings, dtype=np.float32))
