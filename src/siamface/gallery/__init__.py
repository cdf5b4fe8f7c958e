"""1:N identification: a face gallery (built-in SQLite + faiss folder, or a Milvus
collection), enrollment from image files, open-set search, and identification metrics.
See docs/gallery.md."""

from siamface.decide.open_set import Match, SearchResult
from siamface.gallery.backends import BACKENDS, open_gallery
from siamface.gallery.gallery import UNKNOWN, Gallery, template_of
from siamface.gallery.records import NewPerson, PersonRecord
from siamface.gallery.validation import AGGREGATIONS, ModelMismatchError

__all__ = [
    "AGGREGATIONS",
    "BACKENDS",
    "UNKNOWN",
    "Gallery",
    "Match",
    "ModelMismatchError",
    "NewPerson",
    "PersonRecord",
    "SearchResult",
    "open_gallery",
    "template_of",
]
