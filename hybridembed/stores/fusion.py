"""Fusion of ranked lists — the reference maths. Stores fuse in the database where they
can (Qdrant's Query API, one SQL statement on PostgreSQL); these functions define what
the result must be and fuse in Python where a database cannot.

* ``rrf``: ``sum_i w_i / (k + rank_i)``, ranks from 1, absent lists contribute 0.
* ``dbsf``: each list's scores mapped with ``(s - (mean - 3 sd)) / (6 sd)`` (sample sd,
  as Qdrant), then summed; a list of one or with sd 0 maps to 0.5.
* ``weighted``: weighted RRF — ``rrf`` with per-retriever weights (dense, sparse).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

Ranked = Sequence[tuple[Hashable, float]]  # (id, score), best first


def rrf(lists: Sequence[Ranked], k: int = 60,
        weights: Sequence[float] | None = None) -> list[tuple[Hashable, float]]:
    weights = weights or [1.0] * len(lists)
    scores: dict[Hashable, float] = {}
    for ranked, w in zip(lists, weights, strict=True):
        for rank, (key, _) in enumerate(ranked, start=1):
            scores[key] = scores.get(key, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))


def dbsf_normalize(ranked: Ranked) -> list[tuple[Hashable, float]]:
    values = [s for _, s in ranked]
    if len(values) < 2:
        return [(key, 0.5) for key, _ in ranked]
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    if sd == 0:
        return [(key, 0.5) for key, _ in ranked]
    low = mean - 3 * sd
    return [(key, (s - low) / (6 * sd)) for key, s in ranked]


def dbsf(lists: Sequence[Ranked]) -> list[tuple[Hashable, float]]:
    scores: dict[Hashable, float] = {}
    for ranked in lists:
        for key, s in dbsf_normalize(ranked):
            scores[key] = scores.get(key, 0.0) + s
    return sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))


def fuse(method: str, lists: Sequence[Ranked], k: int = 60,
         weights: Sequence[float] | None = None) -> list[tuple[Hashable, float]]:
    if method == "rrf":
        return rrf(lists, k)
    if method == "weighted":
        return rrf(lists, k, weights)
    if method == "dbsf":
        return dbsf(lists)
    raise ValueError(f"unknown fusion {method!r}; valid: rrf, dbsf, weighted")
