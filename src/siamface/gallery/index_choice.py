"""The rule that picks an index kind by gallery size, and when a trained index is retrained.

Measured with ``bench/gallery_scale.py`` (512-d, templates uniform on the sphere, probes at
genuine cosine ~0.6; see docs/gallery.md):

* ``flat`` (faiss ``IndexFlatIP``) is exact; its cost grows linearly with the gallery, so it
  is used up to :data:`EXACT_MAX` vectors.
* ``pqfs`` (faiss 4-bit fast-scan product quantisation: a SIMD scan over 32-byte codes, then
  float16 re-scoring) finds the probe's own identity in the top 5 for every probe at 1M
  vectors in a few milliseconds, with about half the memory of the raw float32 vectors. It is
  the automatic choice above :data:`EXACT_MAX`.
* ``ivfpqfs`` (inverted lists + fast-scan PQ), ``hnsw`` (hnswlib) and ``usearch`` (HNSW
  with int8 vectors) are kept for measurement: cluster and graph indexes need neighbourhoods
  that uniformly spread templates do not have, and lost many probes there. Real embeddings
  may cluster more; ``bench/gallery_scale.py --compare`` measures them again.
"""

from __future__ import annotations

#: Galleries with at most this many vectors use exact search (no training, exact ranking).
#: Exact search costs ~1 ms at 20k x 512-d on an idle core but ~40 ms at 100k on the busy
#: 2-core machine it was measured on, while ``pqfs`` stayed under 1 ms at 100k.
EXACT_MAX = 20_000
#: Kind chosen above EXACT_MAX.
LARGE_KIND = "pqfs"
#: A trained (quantised) index is retrained when the gallery has grown this much since.
RETRAIN_GROWTH = 2.0


def choose_kind(n_vectors: int) -> str:
    """The automatic index choice for a gallery of ``n_vectors`` vectors."""
    return "flat" if n_vectors <= EXACT_MAX else LARGE_KIND
