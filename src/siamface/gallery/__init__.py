"""1:N identification: a face gallery on disk (SQLite + a derived vector index), enrollment
from image files, open-set search, and identification metrics. See docs/gallery.md."""

from siamface.gallery.gallery import (
    AGGREGATIONS,
    UNKNOWN,
    Gallery,
    Match,
    ModelMismatchError,
    SearchResult,
)
from siamface.gallery.store import NewPerson, PersonRecord

__all__ = [
    "AGGREGATIONS",
    "UNKNOWN",
    "Gallery",
    "Match",
    "ModelMismatchError",
    "NewPerson",
    "PersonRecord",
    "SearchResult",
]
