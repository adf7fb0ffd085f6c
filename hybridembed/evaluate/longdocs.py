"""Long-document retrieval: naive, overlapping and late chunking compared on one labelled
set whose answers need context from elsewhere in their document.

The set, ``stdlib-longdocs`` (:func:`stdlib_long_documents`), is built from the running
Python's standard library docstrings (text under the Python Software Foundation License,
shipped with every Python): one long document per module — the module's own docstring
first, then the explanation (the docstring less its one-paragraph summary) of every
documented function, class and method, in definition order, each a paragraph that does
not repeat its object's or module's name. Each object whose summary has 4-40 words gives
a query: that summary, followed by the first sentence of its module's docstring in
parentheses — e.g. "Return the current position (Functions that read and write gzipped
files.)". The relevant chunks are those holding any of the object's explanation. The
summary alone often matches explanations in several modules (many modules have a
``close`` or ``read``); which module is meant is said only at the top of the document,
usually many chunks away. Nothing is written by hand and nothing is tuned: the queries
are what the library's authors wrote.

:func:`compare_chunking` indexes the set three ways in fresh Qdrant Edge collections —
``naive`` (chunks of ``chunk_tokens`` tokens embedded alone), ``overlap`` (the same with
``overlap`` tokens shared by neighbours) and ``late`` (the naive chunks, pooled by
:meth:`~hybridembed.Embedder.embed_chunks` from token states of the whole document) — and
reports nDCG@k, MRR@k and Recall@100 per search mode with each method's encode time.
"""

from __future__ import annotations

import re
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError
from ..stores.base import Document
from .datasets import explained, stdlib_modules, stdlib_version
from .metrics import per_query

METHODS: tuple[str, ...] = ("naive", "overlap", "late")
_SENTENCE = re.compile(r"(?<=[.!?])\s")


def stdlib_long_documents(min_paragraphs: int = 4) -> tuple[list[dict], list[dict]]:
    """``(documents, queries)``: documents ``{"id", "text"}`` (one per standard-library
    module with at least ``min_paragraphs`` explanations), queries ``{"id", "text",
    "topic", "doc", "start", "end"}`` whose answer is characters ``[start, end)`` of document
    ``doc``. Deterministic for a Python version."""
    docs, queries = [], []
    seen: set[str] = set()
    for module_name, module in stdlib_modules():
        head = _paragraphs(module.__doc__ or "")
        topic = _SENTENCE.split(head, maxsplit=1)[0].strip() if head else ""
        if len(topic.split()) < 3:
            continue
        text, found = head, []
        for name, summary, body in explained(module, seen):
            start = len(text) + 2
            text = f"{text}\n\n{body}"
            if 4 <= len(summary.split()) <= 40:
                found.append({"id": f"q:{module_name}.{name}", "text": f"{summary} ({topic})",
                              "topic": topic, "doc": module_name, "start": start,
                              "end": len(text)})
        if len(found) >= min_paragraphs:
            docs.append({"id": module_name, "text": text})
            queries += found
    return docs, queries


def _paragraphs(text: str) -> str:
    """A docstring's paragraphs, each on one line, separated by blank lines."""
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n") if p.strip())


def compare_chunking(embedder, methods: Sequence[str] = METHODS,
                     modes: Sequence[str] = ("dense", "sparse", "hybrid", "hybrid+rerank"),
                     chunk_tokens: int = 128, overlap: int = 32, k: int = 10,
                     recall_k: int = 100, fusion: str = "rrf",
                     data_dir: str | Path | None = None,
                     progress: Callable[[str], Any] | None = print,
                     max_documents: int | None = None) -> dict[str, Any]:
    """Score each chunking method of :data:`METHODS` on ``stdlib-longdocs`` in every search
    mode (see :func:`hybridembed.evaluate.run.parse_mode`); ``max_documents`` keeps the
    first documents only (and their queries: a quick run). Raises
    :class:`InvalidOptionError` for an unknown method or mode, or a bad chunk size."""
    from ..engine.windows import windows
    from ..stores import open_store
    from .run import _mean, parse_mode

    progress = progress or (lambda _m: None)
    check_methods(methods)
    parsed = {m: parse_mode(m) for m in modes}
    windows(chunk_tokens + 1, chunk_tokens, overlap)  # checks size and overlap
    multivector = any(rr == "multivector" for _, rr in parsed.values())
    docs, queries = stdlib_long_documents()
    if max_documents is not None:
        docs = docs[:max_documents]
        queries = [q for q in queries if q["doc"] in {d["id"] for d in docs}]
    tok = embedder.tokenizer
    metrics = [f"ndcg@{k}", f"mrr@{k}", f"recall@{recall_k}"]
    report: dict[str, Any] = {
        "kind": "chunking", "dataset": f"stdlib-longdocs ({stdlib_version()})",
        "model": embedder.model, "docs": len(docs), "queries": len(queries),
        "document_tokens": 0, "chunk_tokens": chunk_tokens, "overlap": overlap, "k": k,
        "recall_k": recall_k, "fusion": fusion, "metrics": metrics, "methods": {}}
    offsets = {d["id"]: tok.content(d["text"])[1] for d in docs}
    report["document_tokens"] = sum(len(o) for o in offsets.values())
    for method in methods:
        step_overlap = overlap if method == "overlap" else 0
        chunks: dict[str, list[tuple[str, int, int]]] = {}  # doc -> (id, start, end)
        with tempfile.TemporaryDirectory(prefix="hybridembed-longdocs-", dir=data_dir) as tmp:
            store = open_store(embedder, "edge", data_dir=tmp)
            try:
                name = "longdocs_" + uuid.uuid4().hex[:10]
                store.create_collection(name, multivector=multivector)
                encode_s = 0.0
                for d in docs:
                    off = offsets[d["id"]]
                    spans = windows(len(off), chunk_tokens, step_overlap)
                    texts = [d["text"][off[a, 0]:off[b - 1, 1]] for a, b in spans]
                    t0 = time.perf_counter()
                    if method == "late":
                        result = embedder.embed_chunks(d["text"], every=chunk_tokens,
                                                       sparse=True,
                                                       multivector=multivector).result
                    else:
                        result = embedder.embed(texts, sparse=True, multivector=multivector)
                    encode_s += time.perf_counter() - t0
                    ids = [f"{d['id']}#{n}" for n in range(len(spans))]
                    chunks[d["id"]] = [(i, int(off[a, 0]), int(off[b - 1, 1]))
                                       for i, (a, b) in zip(ids, spans, strict=True)]
                    store.upsert_embedded(name, [Document(t, i) for t, i in zip(texts, ids,
                                                                                 strict=True)],
                                          result)
                qrels = {q["id"]: {cid: 1 for cid, a, b in chunks[q["doc"]]
                                   if a < q["end"] and q["start"] < b} for q in queries}
                row: dict[str, Any] = {"chunks": sum(map(len, chunks.values())),
                                       "encode_s": encode_s, "modes": {}}
                for mode, (base, rerank) in parsed.items():
                    run = {q["id"]: [h.id for h in store.search(
                        name, q["text"], mode=base, fusion=fusion, k=max(k, recall_k),
                        rerank=rerank)] for q in queries}
                    row["modes"][mode] = _mean(per_query(run, qrels, k, recall_k).values(),
                                               metrics)
                    progress(f"[{method}] {mode}: " + ", ".join(
                        f"{m} {row['modes'][mode][m]:.3f}" for m in metrics))
                report["methods"][method] = row
            finally:
                store.close()
    return report


def check_methods(methods: Sequence[str]) -> None:
    """Raise :class:`InvalidOptionError` unless ``methods`` is a non-empty list of
    :data:`METHODS`."""
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise InvalidOptionError(f"unknown chunking method(s) {bad}; valid: "
                                 f"{', '.join(METHODS)}", "methods")


def format_chunking(report: dict[str, Any]) -> str:
    """The report of :func:`compare_chunking` as a table: one row per method and mode."""
    metrics = report["metrics"]
    lines = [f"Chunking methods on {report['dataset']} with {report['model']}: "
             f"{report['docs']} documents ({report['document_tokens']:,} tokens), "
             f"{report['queries']} queries, chunks of {report['chunk_tokens']} tokens "
             f"(overlap method: {report['overlap']} shared), fusion {report['fusion']}", ""]
    head = f"{'method':<9}{'mode':<16}" + "".join(f"{m:>12}" for m in metrics) + \
        f"{'chunks':>8}{'encode s':>10}"
    lines += [head, "-" * len(head)]
    for method, row in report["methods"].items():
        for mode, scores in row["modes"].items():
            lines.append(f"{method:<9}{mode:<16}" + "".join(f"{scores[m]:>12.4f}"
                                                          for m in metrics)
                         + f"{row['chunks']:>8}{row['encode_s']:>10.1f}")
    base = report["methods"].get("naive")
    late = report["methods"].get("late")
    if base and late:
        lines += ["", f"late / naive encode time: {late['encode_s'] / base['encode_s']:.2f}x"]
        for mode in late["modes"]:
            a, b = base["modes"][mode][metrics[0]], late["modes"][mode][metrics[0]]
            lines.append(f"{mode}: {metrics[0]} late - naive = {b - a:+.4f} "
                         f"({(b - a) / a * 100 if a else float('nan'):+.1f}%)")
    return "\n".join(lines)


__all__ = ["METHODS", "compare_chunking", "format_chunking", "stdlib_long_documents"]
