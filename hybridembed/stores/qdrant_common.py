"""What the two Qdrant adapters (embedded Edge and qdrant-client) share: the query plan,
fusion, tie-breaking and turning the result into :class:`Candidate` rows.

Qdrant breaks ties between equal scores in no fixed order (the same query on Qdrant Edge
gave 4 different orders in 20 runs), and its fusion ranks tied points of a retriever's
list in that order too, so a fused score itself could change from call to call. Every
store must give the same query the same answer, ordered as pgvector orders it: by score,
ties by document id (code-point order). So Qdrant is asked only for what it does well,
each retriever's top ``candidates`` (dense HNSW, sparse index, payload filter inside),
and the rest happens here, with :mod:`.fusion` — the reference maths pgvector's SQL
equals:

1. one batch with a plain search per retriever (dense, sparse), payload ``key`` only;
   each list is sorted by (-score, id), which gives every hit its per-retriever rank;
2. hybrid: the lists fused with :func:`~.fusion.fuse` (rrf, dbsf, weighted; ties by id);
3. with a multi-vector query: one MaxSim search on ``multivector`` restricted to the top
   ``candidates`` fused ids, sorted by (-score, id);
4. the payloads (text, payload) of the final ``k`` fetched by id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .base import Candidate, QuerySpec, point_uuid
from .fusion import fuse


@dataclass
class Step:
    """One Qdrant search, independent of the client library: nearest points of vector
    ``using`` (``dense``, ``sparse``, ``multivector``) to the query's, each with its stored
    ``key``; ``ids`` restricts the search to those points, ``filter`` by payload."""

    limit: int
    using: str
    filter: dict[str, Any] = field(default_factory=dict)
    ids: list[str] | None = None

    def __post_init__(self) -> None:
        if self.ids is not None and self.filter:
            raise ValueError("a step restricts to ids or filters by payload, not both")


class QueryClient(Protocol):
    def run(self, steps: list[Step], spec: QuerySpec) -> list[list[Any]]:
        """Points of each step (each has ``id``, ``score`` and ``payload`` holding
        ``key``), in any order."""
        ...

    def fetch(self, point_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Stored payload (``key``, ``text``, ``payload``) by point id."""
        ...


def query(client: QueryClient, spec: QuerySpec) -> list[Candidate]:
    wanted = ["dense", "sparse"] if spec.mode == "hybrid" else [spec.mode]
    lists = [by_score_then_id(points) for points in client.run(
        [Step(spec.candidates, using=r, filter=spec.filter) for r in wanted], spec)]
    per_retriever = {r: {key: (rank, score) for rank, (key, score) in enumerate(ranked, 1)}
                     for r, ranked in zip(wanted, lists, strict=True)}
    fused = (fuse(spec.fusion, lists, k=spec.rrf_k, weights=spec.weights)
             if spec.mode == "hybrid" else lists[0])[:spec.candidates]
    if spec.multivector is not None and fused:
        ids = [point_uuid(key) for key, _ in fused]
        points = client.run([Step(len(ids), using="multivector", ids=ids)], spec)[0]
        tokens = max(len(spec.multivector), 1)  # Qdrant sums MaxSim over query tokens; we mean
        fused = [(key, score / tokens) for key, score in by_score_then_id(points)]
    final = fused[:spec.k]
    stored = client.fetch([point_uuid(key) for key, _ in final])
    out = []
    for rank, (key, score) in enumerate(final, 1):
        retrievers = {r: {"rank": found[key][0], "score": found[key][1]}
                      for r, found in per_retriever.items() if key in found}
        if spec.multivector is not None:
            retrievers["multivector"] = {"rank": rank, "score": score}
        row = stored.get(point_uuid(key), {})
        out.append(Candidate(key=key, score=score, text=row.get("text", ""),
                             payload=row.get("payload", {}), retrievers=retrievers))
    return out


def by_score_then_id(points) -> list[tuple[str, float]]:
    """(document id, score) best first, equal scores in code-point order of the id."""
    pairs = [((p.payload or {}).get("key", str(p.id)), float(p.score)) for p in points]
    return sorted(pairs, key=lambda kv: (-kv[1], kv[0]))
