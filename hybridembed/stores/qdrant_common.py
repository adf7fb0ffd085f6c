"""What the two Qdrant adapters (embedded Edge and qdrant-client) share: turning the
per-retriever result lists and the final stage into :class:`Candidate` rows, and
weighted RRF, which Qdrant does not apply as :mod:`.fusion` defines it (its ``weights``
left the order unchanged in our tests), so it is computed here from the two lists the
database returned."""

from __future__ import annotations

from .base import Candidate, QuerySpec
from .fusion import fuse


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
