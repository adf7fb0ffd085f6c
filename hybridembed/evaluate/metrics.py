"""Retrieval metrics with the definitions BEIR reports (through pytrec_eval / trec_eval).

* ``ndcg_at``: DCG = sum over the top ``k`` of ``grade / log2(rank + 1)`` (linear gain,
  the trec_eval default that BEIR uses, not ``2**grade - 1``), divided by the DCG of the
  ideal ranking, built from every judged grade sorted high to low and cut at ``k``.
* ``mrr_at``: ``1 / rank`` of the first relevant document (grade > 0) in the top ``k``,
  else 0.
* ``recall_at``: relevant documents (grade > 0) found in the top ``k`` over all relevant
  documents of the query, including any the corpus lacks.

Grades of 0 or below are "judged not relevant": they add no gain and count as no hit. A
document ranked twice counts at its first rank only. A query without a relevant document
scores 0 on each metric; :func:`mean_metrics` leaves such queries out of the averages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def _unique(ranked_ids: Sequence[str], k: int) -> list[str]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    seen: set[str] = set()
    out = []
    for doc in ranked_ids:
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
            if len(out) == k:
                break
    return out


def ndcg_at(ranked_ids: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one ranking against graded judgements ``{doc id: grade}``."""
    top = _unique(ranked_ids, k)
    dcg = sum(max(relevant.get(doc, 0), 0) / math.log2(rank + 1)
              for rank, doc in enumerate(top, 1))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, 1))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at(ranked_ids: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document within the top ``k``."""
    for rank, doc in enumerate(_unique(ranked_ids, k), 1):
        if relevant.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at(ranked_ids: Sequence[str], relevant: Mapping[str, int], k: int = 100) -> float:
    """Share of the relevant documents found in the top ``k``."""
    wanted = {doc for doc, grade in relevant.items() if grade > 0}
    if not wanted:
        return 0.0
    return len(wanted.intersection(_unique(ranked_ids, k))) / len(wanted)


def has_relevant(relevant: Mapping[str, int]) -> bool:
    return any(grade > 0 for grade in relevant.values())


def per_query(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]],
              k: int = 10, recall_k: int = 100) -> dict[str, dict[str, float]]:
    """``{query id: {metric: value}}`` for every query of ``qrels`` with a relevant
    document. A query missing from ``run`` counts as an empty ranking (it scores 0)."""
    out = {}
    for qid, relevant in qrels.items():
        if not has_relevant(relevant):
            continue
        ranked = run.get(qid, [])
        out[qid] = {f"ndcg@{k}": ndcg_at(ranked, relevant, k),
                    f"mrr@{k}": mrr_at(ranked, relevant, k),
                    f"recall@{recall_k}": recall_at(ranked, relevant, recall_k)}
    return out


def mean_metrics(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]],
                 k: int = 10, recall_k: int = 100) -> dict[str, float]:
    """nDCG@k, MRR@k and Recall@recall_k averaged over the queries of ``qrels`` that have
    at least one relevant document (``queries`` says how many). Queries missing from
    ``run`` score 0 rather than being dropped (pytrec_eval would drop them)."""
    scores = per_query(run, qrels, k, recall_k)
    names = (f"ndcg@{k}", f"mrr@{k}", f"recall@{recall_k}")
    n = len(scores)
    out: dict[str, float] = {name: (sum(s[name] for s in scores.values()) / n if n else 0.0)
                             for name in names}
    out["queries"] = n
    return out
