"""What the two Qdrant adapters (embedded Edge and qdrant-client) share: the query plan,
turning the per-retriever result lists and the final stage into :class:`Candidate` rows,
and weighted RRF, which Qdrant does not apply as :mod:`.fusion` defines it (its
``weights`` left the order unchanged in our tests), so it is computed here from the two
lists the database returned.

The plan is written once, as :class:`Step` descriptions; each adapter's
:class:`QueryClient` turns a step into its library's request objects and runs them:

1. one batch with a plain search per retriever (dense, sparse): the per-retriever ranks
   and scores shown with every hit;
2. one request for the final list: a retriever's search, or the retrievers as prefetches
   fused with RRF/DBSF, optionally wrapped in a MaxSim rerank on ``multivector``. Weighted
   fusion is computed from step 1's lists; its rerank is restricted to their ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .base import Candidate, QuerySpec
from .fusion import fuse


@dataclass
class Step:
    """One Qdrant query, independent of the client library. ``using`` names the vector
    searched (``dense``, ``sparse``, ``multivector``), or ``fusion`` (``rrf``, ``dbsf``)
    fuses ``prefetch``; ``ids`` restricts the search to those points."""

    limit: int
    using: str | None = None
    fusion: str | None = None
    prefetch: list[Step] = field(default_factory=list)
    filter: dict[str, Any] = field(default_factory=dict)
    ids: list[str] | None = None
    with_payload: bool = False

    def __post_init__(self) -> None:
        if self.ids is not None and self.filter:
            raise ValueError("a step restricts to ids or filters by payload, not both")


class QueryClient(Protocol):
    def run(self, steps: list[Step], spec: QuerySpec) -> list[list[Any]]:
        """Points of each step, best first (each has ``id``, ``score``, ``payload``)."""
        ...


def query(client: QueryClient, spec: QuerySpec) -> list[Candidate]:
    wanted = ["dense", "sparse"] if spec.mode == "hybrid" else [spec.mode]
    weighted = spec.mode == "hybrid" and spec.fusion == "weighted"
    searches = [Step(spec.candidates, using=r, filter=spec.filter, with_payload=weighted)
                for r in wanted]
    lists = client.run(searches, spec)
    per_retriever = {r: ranked(points) for r, points in zip(wanted, lists, strict=True)}
    if weighted:
        fused = weighted_ids(spec, *lists)[:spec.candidates]
        if spec.multivector is None:
            stored = {str(p.id): p.payload for points in lists for p in points}
            return candidates(spec, per_retriever,
                              [(pid, s, stored[pid]) for pid, s in fused[:spec.k]])
        final = Step(spec.k, using="multivector", ids=[pid for pid, _ in fused],
                     with_payload=True)
    else:
        if spec.mode == "hybrid":
            stage = Step(spec.candidates, fusion=spec.fusion,
                         prefetch=[Step(spec.candidates, using=r, filter=spec.filter)
                                   for r in wanted])
        else:
            stage = Step(spec.candidates, using=spec.mode, filter=spec.filter)
        if spec.multivector is None:
            final = replace(stage, limit=spec.k, with_payload=True)
        else:
            final = Step(spec.k, using="multivector", prefetch=[stage], with_payload=True)
    points = client.run([final], spec)[0]
    return candidates(spec, per_retriever, [(str(p.id), p.score, p.payload) for p in points])


def ranked(points) -> dict[str, tuple[int, float]]:
    return {str(p.id): (rank, p.score) for rank, p in enumerate(points, 1)}


def weighted_ids(spec: QuerySpec, dense_points, sparse_points) -> list[tuple[str, float]]:
    lists = [[(str(p.id), p.score) for p in dense_points],
             [(str(p.id), p.score) for p in sparse_points]]
    return fuse("weighted", lists, k=spec.rrf_k, weights=spec.weights)


def candidates(spec: QuerySpec, per_retriever: dict[str, dict[str, tuple[int, float]]],
               final: list[tuple[str, float, dict]]) -> list[Candidate]:
    """``final`` is (point id, score, stored payload) best first."""
    out = []
    for rank, (pid, score, stored) in enumerate(final, 1):
        retrievers = {r: {"rank": found[pid][0], "score": found[pid][1]}
                      for r, found in per_retriever.items() if pid in found}
        if spec.multivector is not None:  # Qdrant sums MaxSim over query tokens; BGE-M3 means
            score = score / max(len(spec.multivector), 1)
            retrievers["multivector"] = {"rank": rank, "score": score}
        stored = stored or {}
        out.append(Candidate(key=stored.get("key", pid), score=score,
                             text=stored.get("text", ""), payload=stored.get("payload", {}),
                             retrievers=retrievers))
    return out
