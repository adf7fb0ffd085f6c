"""What the pgvector store and the pgvector migration both need to agree on: pgvector's
size limits, the dense column type for a dimension, and how BM25 hash indices fold into
pgvector's sparse space. One place, so the two cannot drift apart (they had: the store
summed colliding BM25 entries, the migration kept the largest)."""

from __future__ import annotations

from .sparse import SparseVector

BM25_SPACE = 1_000_000_000  # pgvector's largest sparsevec dimension
SPARSE_INDEX_MAX_NNZ = 1000  # pgvector's HNSW limit on non-zero entries
VECTOR_INDEX_MAX_DIM = 2000  # HNSW on vector(D)
HALFVEC_INDEX_MAX_DIM = 4000  # HNSW on halfvec(D)
MAX_DIM = 16000  # pgvector's largest vector / halfvec


def dense_is_half(dim: int) -> bool:
    """True when a ``dim``-dimensional dense vector is stored as ``halfvec`` (above
    :data:`VECTOR_INDEX_MAX_DIM`, where HNSW on ``vector`` stops)."""
    return dim > VECTOR_INDEX_MAX_DIM


def dense_type(dim: int) -> str:
    """The column type for ``dim`` dense dimensions: ``vector(dim)`` or ``halfvec(dim)``."""
    return f"{'halfvec' if dense_is_half(dim) else 'vector'}({dim})"


def dense_hnsw_ops(dim: int) -> str | None:
    """The HNSW cosine operator class for ``dim`` dense dimensions; None above
    :data:`HALFVEC_INDEX_MAX_DIM` (no HNSW index: searched exactly)."""
    if dim > HALFVEC_INDEX_MAX_DIM:
        return None
    return "halfvec_cosine_ops" if dense_is_half(dim) else "vector_cosine_ops"


def sparse_space(learned: bool, vocab_size: int) -> int:
    """The ``sparsevec`` dimension: the vocabulary for learned sparse vectors (when known
    and within pgvector's limit), :data:`BM25_SPACE` for BM25 hash indices."""
    if not learned or vocab_size <= 0:
        return BM25_SPACE
    return min(vocab_size, BM25_SPACE)


def map_bm25(vector: SparseVector) -> SparseVector:
    """BM25 hash indices folded into pgvector's sparse space (collisions summed)."""
    if not len(vector):
        return vector
    return SparseVector.from_pairs(vector.indices % BM25_SPACE, vector.values, reduce="sum")
