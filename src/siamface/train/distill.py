"""Distillation: a face model (the teacher) shows the student where each face belongs.

A user with their own small, fast backbone and a few hundred people cannot teach it what a face
is; a face model can. The teacher embeds every training image once (its own alignment, its own
input size: ``sface``, ``dlib``, any checkpoint or ``.onnx``), the vectors are cached on disk by
file content and teacher fingerprint, and the student is trained to reproduce them:

* the *embedding* term, ``1 - cos(student, teacher)`` per image (through a learned linear map
  when the sizes differ), pulls each face to the teacher's direction;
* the *relational* term, the mean squared difference between the student's and the teacher's
  cosine-similarity matrices over the batch, asks only that pairs be as similar as the teacher
  finds them: the geometry that verification thresholds, whatever the embedding size.

Several teachers form an ensemble: their unit vectors are concatenated and rescaled to unit
length, so each contributes equally to every similarity. No labels are needed for either term.
The same machinery anchors fine-tuning (``keep_close``): there the teacher is the starting
model itself, which keeps the fine-tuned embeddings close to where they started.

The teacher cache checks what it reads: each row carries a digest of its key and vector, and
vectors must be finite unit vectors of the teacher's size. Rows moved between keys, set to NaN
or cut short discard the whole cache (named in a one-line notice) and the teacher embeds again,
instead of distilling towards another image's vector or a loss that "became nan".
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from siamface.embed.load import create_embedder
from siamface.errors import SiamfaceError
from siamface.folders.images import file_digest
from siamface.integrity import (
    DamagedCache,
    discard,
    open_sqlite_cache,
    row_digest,
    sqlite_files,
)
from siamface.system import cache_dir
from siamface.train.objective import Batch, LossTerm

if TYPE_CHECKING:
    from siamface.tensors.dataset import FaceImageDataset
    from siamface.train.config import TrainConfig

log = logging.getLogger(__name__)


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS emb (digest TEXT PRIMARY KEY, vec BLOB, error TEXT, "
    "rowsum TEXT NOT NULL);"
)
_PROBE = "SELECT digest, vec, error, rowsum FROM emb LIMIT 1"
WHAT = "teacher cache"


def _vector_problem(vec: np.ndarray, dim: int | None) -> str | None:
    """Why a cached teacher vector cannot be a target (None: it can)."""
    if dim is not None and vec.shape != (dim,):
        return f"{vec.size} values, expected {dim}"
    if not np.isfinite(vec).all():
        return "NaN or infinite values"
    if abs(float(np.linalg.norm(vec)) - 1.0) > 1e-3:
        return f"norm {float(np.linalg.norm(vec)):.4g}, expected a unit vector"
    return None


class TeacherCache:
    """One teacher's embeddings of image files, keyed by the file's SHA-256 (SQLite), each
    row checked on read (see the module docstring)."""

    def __init__(self, fingerprint: str, root: Path | None = None, dim: int | None = None) -> None:
        safe = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        self.path = (root or cache_dir("teachers")) / f"teacher-{safe}.sqlite"
        self.dim = dim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        return open_sqlite_cache(self.path, WHAT, _SCHEMA, _PROBE, timeout=60, isolation_level=None)

    def get_many(self, digests: Sequence[str]) -> dict[str, np.ndarray | str]:
        """Cached vectors (or failure reasons) by digest. A damaged row or database discards
        the whole cache with a notice and returns nothing: everything is embedded again."""
        try:
            return self._get_many(digests)
        except (DamagedCache, sqlite3.DatabaseError) as err:
            self.db.close()
            discard(sqlite_files(self.path), WHAT, str(err))
            self.db = self._connect()
            return {}

    def _get_many(self, digests: Sequence[str]) -> dict[str, np.ndarray | str]:
        out: dict[str, np.ndarray | str] = {}
        for start in range(0, len(digests), 500):
            chunk = list(digests[start : start + 500])
            marks = ",".join("?" * len(chunk))
            q = f"SELECT digest, vec, error, rowsum FROM emb WHERE digest IN ({marks})"
            for d, vec, err, rowsum in self.db.execute(q, chunk):
                if rowsum != row_digest(d, vec, err):
                    raise DamagedCache(f"the row of image {d[:12]} does not match its digest")
                if err is not None:
                    out[d] = err
                    continue
                v = np.frombuffer(vec or b"", dtype=np.float32)
                problem = _vector_problem(v, self.dim)
                if problem:
                    raise DamagedCache(f"the vector of image {d[:12]} has {problem}")
                out[d] = v
        return out

    def put_many(self, rows: list[tuple[str, np.ndarray | None, str | None]]) -> None:
        blobs = [(d, None if v is None else v.astype(np.float32).tobytes(), e) for d, v, e in rows]
        self.db.executemany(
            "INSERT OR REPLACE INTO emb (digest, vec, error, rowsum) VALUES (?, ?, ?, ?)",
            [(d, b, e, row_digest(d, b, e)) for d, b, e in blobs],
        )

    def close(self) -> None:
        self.db.close()


def teacher_embeddings(
    spec: str,
    paths: Sequence[Path],
    digests: Sequence[str] | None = None,
    progress: bool = True,
    log_fn=print,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) unit vectors of teacher ``spec`` for ``paths`` and an (N,) bool mask of the
    images it could embed (no face found for it: False). Cached by content."""
    teacher = create_embedder(spec)
    digests = list(digests) if digests is not None else [file_digest(p) for p in paths]
    cache = TeacherCache(
        f"{teacher.fingerprint}:{teacher.embedding_size}", dim=teacher.embedding_size
    )
    try:
        hits = cache.get_many(digests)
        todo = [i for i, d in enumerate(digests) if d not in hits]
        if todo:
            log_fn(
                f"teacher {spec}: embedding {len(todo)} image(s) "
                f"({len(digests) - len(todo)} cached)"
            )
            emb, errors = teacher.embed_paths([paths[i] for i in todo], progress=progress)
            rows, k = [], 0
            for j, i in enumerate(todo):
                if j in errors:
                    rows.append((digests[i], None, errors[j] or "no face"))
                else:
                    rows.append((digests[i], emb[k], None))
                    k += 1
            cache.put_many(rows)
            hits.update({d: (e if v is None else v) for d, v, e in rows})
    finally:
        cache.close()
    dim = teacher.embedding_size
    out = np.zeros((len(digests), dim), dtype=np.float32)
    ok = np.zeros(len(digests), dtype=bool)
    for i, d in enumerate(digests):
        v = hits.get(d)
        if isinstance(v, np.ndarray) and v.shape == (dim,):
            out[i], ok[i] = v, True
    return out, ok


def ensemble(parts: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate unit vectors of several teachers, rescaled to unit length; an image counts
    only when every teacher embedded it."""
    if len(parts) == 1:
        return parts[0], masks[0]
    joined = np.concatenate(parts, axis=1) / np.sqrt(len(parts))
    return joined.astype(np.float32), np.logical_and.reduce(masks)


class DistillationTerm(LossTerm):
    """Embedding and relational distillation towards fixed per-image target vectors.

    ``targets``: (N, Dt) unit vectors indexed by dataset index (``batch.extras["index"]``);
    ``valid``: (N,) mask of images that have a target. The student's embedding goes through a
    learned linear map to ``Dt`` when its size differs (for the embedding term only).
    """

    def __init__(
        self,
        name: str,
        targets: torch.Tensor,
        valid: torch.Tensor,
        student_dim: int,
        w_embedding: float,
        w_relational: float,
    ) -> None:
        super().__init__(name)
        if targets.ndim != 2 or len(targets) != len(valid):
            raise SiamfaceError("distillation targets must be (N, D) with one mask per image")
        self.register_buffer("targets", targets.float(), persistent=False)
        self.register_buffer("valid", valid.bool(), persistent=False)
        self.w_embedding = float(w_embedding)
        self.w_relational = float(w_relational)
        dt = targets.shape[1]
        self.proj = nn.Linear(student_dim, dt, bias=False) if dt != student_dim else None

    def compute(self, batch: Batch) -> torch.Tensor:
        idx = batch.extras.get("index")
        if idx is None:
            raise SiamfaceError("distillation needs dataset indices in the batch")
        idx = idx.to(self.targets.device)
        keep = self.valid[idx]
        s = batch.embeddings[keep]
        t = self.targets[idx[keep]]
        if len(s) < 2:
            return batch.embeddings.sum() * 0.0
        total = s.new_zeros(())
        if self.w_embedding:
            s_t = F.normalize(self.proj(s), dim=1) if self.proj is not None else s
            total = total + self.w_embedding * (1.0 - (s_t * t).sum(1)).mean()
        if self.w_relational:
            off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
            total = total + self.w_relational * ((s @ s.T - t @ t.T)[off] ** 2).mean()
        return total


def teacher_term(
    cfg: TrainConfig,
    train: FaceImageDataset,
    progress: bool = True,
    log_fn: Callable[[str], None] = print,
) -> DistillationTerm | None:
    """The ``distill`` term towards the configured teachers' embeddings of the training
    images (cached on disk by content), or None when the run has no teacher."""
    teachers = cfg.teachers()
    if not teachers:
        return None
    if train.paths is None:
        raise SiamfaceError("distillation needs the training images' file paths")
    digests = [file_digest(p) for p in train.paths]
    parts, masks = [], []
    for spec in teachers:
        emb, ok = teacher_embeddings(spec, train.paths, digests, progress=progress, log_fn=log_fn)
        parts.append(emb)
        masks.append(ok)
        log_fn(f"teacher {spec}: {int(ok.sum())}/{len(ok)} training images embedded")
    targets, valid = ensemble(parts, masks)
    return DistillationTerm(
        "distill",
        torch.from_numpy(targets),
        torch.from_numpy(valid),
        cfg.model.embedding_size,
        cfg.distill.embedding,
        cfg.distill.relational,
    )
