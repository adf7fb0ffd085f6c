"""Sparse lexical vectors: the :class:`SparseVector` type and the operations on it.

A sparse vector is a pair of arrays: sorted, unique ``int64`` indices and ``float32``
values of the same length. For models with a learned sparse head the index is the
tokenizer's vocabulary id; for BM25 it is Qdrant's token hash. Conversions to the
Qdrant Edge, qdrant-client and pgvector types import those packages lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

MergeMode = Literal["sum", "max", "avg"]
MERGE_MODES: tuple[str, ...] = ("sum", "max", "avg")


@dataclass(frozen=True, eq=False)
class SparseVector:
    """Sorted unique integer indices with float32 values (zeros are allowed but pruned
    by every producer in hybridembed)."""

    indices: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        val = np.asarray(self.values, dtype=np.float32).reshape(-1)
        if idx.shape != val.shape:
            raise ValueError(
                f"indices and values differ in length ({idx.size} vs {val.size})"
            )
        if idx.size and (idx.min() < 0):
            raise ValueError("sparse indices must be non-negative")
        if idx.size > 1 and not np.all(idx[1:] > idx[:-1]):
            order = np.argsort(idx, kind="stable")
            idx, val = idx[order], val[order]
            if np.any(idx[1:] == idx[:-1]):
                dup = int(idx[1:][idx[1:] == idx[:-1]][0])
                raise ValueError(f"duplicate sparse index {dup}; use SparseVector.from_pairs")
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "values", val)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls) -> SparseVector:
        return cls(np.empty(0, np.int64), np.empty(0, np.float32))

    @classmethod
    def from_dict(cls, weights: Mapping[int, float]) -> SparseVector:
        return cls(np.fromiter(weights.keys(), np.int64, len(weights)),
                   np.fromiter(weights.values(), np.float32, len(weights)))

    @classmethod
    def from_sorted(cls, indices: np.ndarray, values: np.ndarray) -> SparseVector:
        """Wrap int64 ``indices`` already sorted, unique and non-negative with their
        float32 ``values``, unchecked: for producers that guarantee it in bulk."""
        vector = object.__new__(cls)
        object.__setattr__(vector, "indices", indices)
        object.__setattr__(vector, "values", values)
        return vector

    @classmethod
    def from_pairs(
        cls, indices: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray,
        reduce: Literal["max", "sum"] = "max",
    ) -> SparseVector:
        """Build from possibly repeated indices, combining repeats with ``reduce``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        val = np.asarray(values, dtype=np.float32).reshape(-1)
        if idx.size == 0:
            return cls.empty()
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = np.zeros(uniq.size, np.float32) if reduce == "sum" else np.full(
            uniq.size, -np.inf, np.float32)
        (np.add if reduce == "sum" else np.maximum).at(out, inverse, val)
        return cls(uniq, out)

    # -- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.indices.size)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SparseVector)
                and np.array_equal(self.indices, other.indices)
                and np.array_equal(self.values, other.values))

    def __repr__(self) -> str:
        return f"SparseVector(nnz={len(self)})"

    def to_dict(self) -> dict[int, float]:
        return dict(zip(self.indices.tolist(), self.values.tolist(), strict=True))

    def to_json(self) -> dict[str, list]:
        return {"indices": self.indices.tolist(), "values": self.values.tolist()}

    def to_tokens(self, id_to_token: Callable[[int], str] | Mapping[int, str]) -> dict[str, float]:
        """``{token_string: weight}`` for people to read, heaviest first."""
        lookup = id_to_token.__getitem__ if isinstance(id_to_token, Mapping) else id_to_token
        order = np.argsort(-self.values, kind="stable")
        return {lookup(int(self.indices[i])): float(self.values[i]) for i in order}

    # -- conversions to store types -----------------------------------------------------
    def to_qdrant_edge(self) -> Any:
        from qdrant_edge import SparseVector as EdgeSparse

        return EdgeSparse(indices=self.indices.tolist(), values=self.values.tolist())

    def to_qdrant(self) -> Any:
        from qdrant_client import models

        return models.SparseVector(indices=self.indices.tolist(), values=self.values.tolist())

    def to_pgvector(self, dim: int) -> Any:
        """pgvector's ``SparseVector``; ``dim`` is the space size (vocabulary size)."""
        from pgvector import SparseVector as PgSparse

        if len(self) and int(self.indices[-1]) >= dim:
            raise ValueError(f"index {int(self.indices[-1])} does not fit dimension {dim}")
        return PgSparse(self.to_dict(), dim)


def prune(vector: SparseVector, min_weight: float | None = None,
          top_k: int | None = None) -> SparseVector:
    """Keep entries with ``value >= min_weight``, then the ``top_k`` heaviest (ties: lower
    index first). The result stays sorted by index."""
    keep = np.ones(len(vector), bool)
    if min_weight is not None:
        keep &= vector.values.astype(np.float64) >= float(min_weight)
    idx, val = vector.indices[keep], vector.values[keep]
    if top_k is not None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        if idx.size > top_k:
            order = np.lexsort((idx, -val))[:top_k]
            order.sort()
            idx, val = idx[order], val[order]
    return SparseVector(idx, val)


def merge(vectors: Iterable[SparseVector], how: MergeMode = "sum") -> SparseVector:
    """Combine several vectors: ``sum``, ``max`` (per index, over the vectors that have it),
    or ``avg`` (the sum divided by the number of vectors, i.e. absent entries count as 0)."""
    if how not in MERGE_MODES:
        raise ValueError(f"unknown merge mode {how!r}; valid: {', '.join(MERGE_MODES)}")
    vectors = list(vectors)
    if not vectors:
        return SparseVector.empty()
    idx = np.concatenate([v.indices for v in vectors])
    val = np.concatenate([v.values for v in vectors])
    out = SparseVector.from_pairs(idx, val, reduce="max" if how == "max" else "sum")
    if how == "avg":
        out = SparseVector(out.indices, out.values / np.float32(len(vectors)))
    return out


def dot(a: SparseVector, b: SparseVector) -> float:
    """Sum over shared indices of ``a_i * b_i``."""
    _, ia, ib = np.intersect1d(a.indices, b.indices, assume_unique=True, return_indices=True)
    return float(np.dot(a.values[ia].astype(np.float64), b.values[ib].astype(np.float64)))
