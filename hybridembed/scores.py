"""Similarity scores between embeddings (NumPy only): dense cosine, lexical matching,
ColBERT MaxSim, and BGE-M3's weighted combination of the three."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .sparse import SparseVector, dot

# BGE-M3's default weights for (dense, sparse, multivector), from its paper and code.
BGE_M3_WEIGHTS: tuple[float, float, float] = (0.4, 0.2, 0.4)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else 0.0


def lexical(a: SparseVector, b: SparseVector) -> float:
    """Lexical matching score: sum over shared ids of ``a_v * b_v``."""
    return dot(a, b)


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """ColBERT late interaction: mean over query tokens of the best dot product with any
    document token. Empty inputs score 0."""
    if len(query) == 0 or len(document) == 0:
        return 0.0
    sims = np.asarray(query, np.float32) @ np.asarray(document, np.float32).T
    return float(sims.max(axis=1).mean())


def combined(dense: float | None = None, sparse: float | None = None,
             multivector: float | None = None,
             weights: Sequence[float] = BGE_M3_WEIGHTS) -> float:
    """BGE-M3's weighted score: ``sum(w_i * s_i) / sum(w_i)`` over the scores given."""
    if len(weights) != 3:
        raise ValueError("weights are (dense, sparse, multivector)")
    parts = [(w, s) for w, s in zip(weights, (dense, sparse, multivector), strict=True)
             if s is not None]
    total = sum(w for w, _ in parts)
    if not parts or total == 0:
        raise ValueError("give at least one score with a non-zero weight")
    return float(sum(w * s for w, s in parts) / total)
