"""Post-processing of padded runtime outputs into per-text results (NumPy only)."""

from __future__ import annotations

import numpy as np

from ..sparse import SparseVector


def l2_normalize(matrix: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.maximum(norms, eps)).astype(np.float32, copy=False)


def finish_dense(pooled: np.ndarray, normalize: bool, dimensions: int | None) -> np.ndarray:
    """Matryoshka truncation to ``dimensions`` (if given), then L2 normalisation."""
    out = pooled[:, :dimensions] if dimensions else pooled
    return l2_normalize(out) if normalize else np.ascontiguousarray(out, dtype=np.float32)


def learned_sparse(ids: np.ndarray, weights: np.ndarray, special_ids: np.ndarray) -> SparseVector:
    """BGE-M3 lexical weights: per vocabulary id the max weight over its occurrences,
    special tokens and zero weights dropped."""
    keep = (weights > 0) & ~np.isin(ids, special_ids)
    return SparseVector.from_pairs(ids[keep], weights[keep], reduce="max")
