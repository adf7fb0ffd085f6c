"""Retrieval quality of an embedder through the real search path, and backend parity.

:func:`evaluate` indexes a data set into a fresh embedded Qdrant Edge collection with
:class:`~hybridembed.stores.VectorStore` (the code ``hybridembed index`` / ``search`` use),
runs every judged query in each mode with ``recall_k`` (100) hits retrieved, and reports
nDCG@k, MRR@k (k = 10) and Recall@100 per mode, as BEIR does, plus timings. Modes are
``dense``, ``sparse``, ``hybrid`` (fusion ``rrf`` by default) and ``hybrid+rerank``
(hybrid, then the ColBERT MaxSim rerank in the store); ``<mode>+cross-encoder`` also works.
For a model with learned sparse vectors (SPLADE, BGE-M3), ``bm25`` searches a second
collection of the same documents whose sparse vectors are BM25's: the learned sparse
retriever measured next to BM25 on the same data and store.

:func:`compare` embeds the same texts with two embedders (say the in-process model and
a server, or fp32 and bf16) and reports the distribution of the per-text cosine between
the two dense vectors: the check to run before switching backends under an existing
index. :func:`format_report` prints either report as tables.

The default data set, ``"generated"``, is the project's own labelled corpus
(:mod:`hybridembed.bench.labelled`): written for hybridembed, generated deterministically
(seed 7) with no download, and licensed with the code under Apache-2.0. It holds 162
documents and 32 queries, each with one relevant document (grade 1):

* 16 *semantic* queries: hand-written paraphrase pairs where the query and its answer
  share no content word, so lexical (BM25) retrieval cannot match them;
* 16 *lexical* queries ("where is QZX-4471"): the answer is a text about something else
  that mentions the random code once, hidden among 120 order / ticket / invoice texts that
  read like the query but carry other codes, so dense retrieval prefers the wrong ones;
* 10 unrelated distractors.

It is built to show that hybrid retrieval finds what each retriever alone misses; it is
tiny and synthetic, not a benchmark to compare models on. ``"stdlib"`` is larger and
natural: ~500 one-line docstring summaries of the running Python's standard library as
queries, each to find its own docstring's explanation among ~600
(:func:`hybridembed.evaluate.datasets.stdlib_docstrings`); it moves when an embedder
changes a little (fp32 against int8, say). For a public benchmark, pass a BEIR folder
(:func:`hybridembed.evaluate.datasets.load_beir`).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidOptionError
from .datasets import Dataset, generated, load_beir, stdlib_docstrings, stdlib_version
from .metrics import has_relevant, per_query

MODES: tuple[str, ...] = ("dense", "sparse", "hybrid", "hybrid+rerank")
_BASES = ("dense", "sparse", "hybrid", "bm25")
_RERANKS = {"": None, "rerank": "multivector", "multivector": "multivector",
            "cross-encoder": "cross-encoder"}
BATCH = 256


def parse_mode(mode: str) -> tuple[str, str | None]:
    """``"hybrid+rerank"`` -> ``("hybrid", "multivector")``."""
    base, _, rerank = str(mode).partition("+")
    if base not in _BASES or rerank not in _RERANKS:
        raise InvalidOptionError(f"unknown mode {mode!r}; valid: dense, sparse, hybrid, each "
                                 "optionally followed by +rerank (multivector MaxSim) or "
                                 "+cross-encoder; bm25 (next to a learned sparse model)",
                                 "modes")
    return base, _RERANKS[rerank]


def load(dataset: str | os.PathLike | Dataset, split: str = "test") -> tuple[str, Dataset]:
    """``(name, (docs, queries, qrels))`` for ``"generated"``, ``"stdlib"``, a BEIR folder
    (judgements from ``qrels/<split>.tsv``), or a data set given as a tuple."""
    if isinstance(dataset, tuple):
        return "custom", dataset
    if isinstance(dataset, str) and dataset == "generated":  # Path("generated"): a folder
        return "generated", generated()
    if isinstance(dataset, str) and dataset == "stdlib":
        return f"stdlib ({stdlib_version()} docstrings)", stdlib_docstrings()
    return str(dataset), load_beir(dataset, split)


# Local engines a spec may name instead of ``local``: the runtime options they stand for.
LOCAL_ENGINES = {"local": {}, "torch": {"runtime": "torch"}, "onnx": {"runtime": "onnx"},
                 "onnx-int8": {"runtime": "onnx", "dtype": "int8"}}


def parse_embedder_spec(spec: str) -> tuple[str, str | None]:
    """``"local:minilm"`` -> ``("local", "minilm")``, ``"remote:http://h:8080"`` ->
    ``("remote", "http://h:8080")``, ``"ollama"`` -> ``("ollama", None)``: the part after
    the first ``:`` is the model for a local engine (``local``, ``torch``, ``onnx``,
    ``onnx-int8``), the URL for the others."""
    from ..backends import BACKENDS

    backend, _, rest = str(spec).partition(":")
    if backend not in BACKENDS and backend not in LOCAL_ENGINES:
        raise InvalidOptionError(f"unknown embedder {spec!r}; write ENGINE[:MODEL] with ENGINE "
                                 f"one of {', '.join(LOCAL_ENGINES)}, or BACKEND[:URL] with "
                                 f"BACKEND one of "
                                 f"{', '.join(b for b in BACKENDS if b != 'local')}", "compare")
    return backend, rest or None


def open_embedder(spec: str, model: str | None = None, **local_options):
    """The embedder a spec such as ``local:minilm``, ``onnx-int8`` or
    ``remote:http://host:8080`` names (see :func:`parse_embedder_spec`). ``model`` is the
    remote model name (or the local one when the spec gives none); ``local_options``
    (device, dtype, runtime...; None values are dropped) go to a local
    :class:`~hybridembed.Embedder`, under those the engine name implies."""
    from ..backends import get_embedder

    backend, rest = parse_embedder_spec(spec)
    if backend in LOCAL_ENGINES:
        options = {k: v for k, v in local_options.items() if v is not None}
        return get_embedder("local", model=rest or model, **{**options,
                                                             **LOCAL_ENGINES[backend]})
    return get_embedder(backend, url=rest, model=model)


def _describe(embedder) -> str:
    if hasattr(embedder, "url"):  # an HTTP backend
        model = getattr(embedder, "model", None)
        return f"{getattr(embedder, 'name', 'http')} {embedder.url}" + (
            f" ({model})" if model else "")
    parts = [p for p in (getattr(embedder, "device", None), getattr(embedder, "dtype", None))
             if p]
    name = getattr(embedder, "model", None) or type(embedder).__name__
    return f"{name} ({', '.join(parts)})" if parts else str(name)


def _cache_room(embedder) -> int:
    stats = getattr(embedder, "stats", None)
    try:
        return int(stats()["cache"]["max_entries"]) if callable(stats) else 0
    except (KeyError, TypeError, ValueError):
        return 0


def _chunks(items: Sequence, size: int = BATCH) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def evaluate(embedder, dataset: str | os.PathLike | Dataset = "generated",
             modes: Sequence[str] = MODES, k: int = 10, data_dir: str | os.PathLike | None = None,
             progress: Callable[[str], Any] | None = print, recall_k: int = 100,
             fusion: str = "rrf", split: str = "test") -> dict[str, Any]:
    """Index ``dataset`` with ``embedder`` and score every mode in ``modes``.

    ``dataset``: ``"generated"``, a BEIR folder (``split`` picks its qrels file), or
    ``(docs, queries, qrels)``. The store
    lives in a temporary folder (created under ``data_dir`` when given) that is deleted at
    the end. ``embedder`` must be an in-process :class:`~hybridembed.Embedder` (the store
    records its model spec); compare an HTTP backend with it using :func:`compare`.
    """
    from ..stores import open_store

    progress = progress or (lambda _msg: None)
    parsed = {m: parse_mode(m) for m in modes}
    if not parsed:
        raise InvalidOptionError("give at least one mode", "modes")
    for name, value in (("k", k), ("recall_k", recall_k)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise InvalidOptionError(f"{name} must be a whole number from 1 to 1000, got "
                                     f"{value!r}", name)
    if getattr(embedder, "spec", None) is None:
        raise InvalidOptionError(f"evaluate needs an in-process Embedder to index with; "
                                 f"{_describe(embedder)} has no model spec. Use compare() to "
                                 "check a remote backend against a local one", "embedder")
    name, (docs, queries, qrels) = load(dataset, split)
    if not docs or not queries:
        raise InvalidInputError(f"data set {name!r} has no documents or no queries")
    judged = [q for q in queries if has_relevant(qrels.get(q["id"], {}))]
    if not judged:
        raise InvalidInputError(f"data set {name!r} has no query with a relevant document")
    doc_ids = {d["id"] for d in docs}
    missing = sum(1 for q in judged for d, g in qrels[q["id"]].items()
                  if g > 0 and d not in doc_ids)
    search_k = max(k, recall_k)
    multivector = any(rr == "multivector" for _, rr in parsed.values())
    report: dict[str, Any] = {
        "kind": "evaluate", "dataset": name, "model": _describe(embedder), "store": "edge",
        "docs": len(docs), "queries": len(judged), "k": k, "recall_k": recall_k,
        "fusion": fusion, "missing_relevant_docs": missing,
        "metrics": [f"ndcg@{k}", f"mrr@{k}", f"recall@{recall_k}"],
        "timings": {}, "modes": {},
    }
    with_bm25 = any(base == "bm25" for base, _ in parsed.values())
    if with_bm25 and embedder.spec.sparse_kind != "learned":
        raise InvalidOptionError(f"mode bm25 compares learned sparse vectors with BM25; "
                                 f"{_describe(embedder)}'s sparse vectors already are BM25 "
                                 "(its 'sparse' mode)", "modes")
    collection = "eval_" + uuid.uuid4().hex[:12]
    if data_dir is not None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hybridembed-eval-", dir=data_dir) as tmp:
        stores = {"": open_store(embedder, "edge", data_dir=os.path.join(tmp, "model"))}
        if with_bm25:
            stores["bm25"] = open_store(WithBm25(embedder), "edge",
                                        data_dir=os.path.join(tmp, "bm25"))
        try:
            for role, store in stores.items():
                store.create_collection(collection, multivector=multivector)
                progress(f"[{name}] indexing {len(docs)} documents with {report['model']}"
                         + (" (BM25 sparse)" if role else ""))
                t0 = time.perf_counter()
                done = 0
                for chunk in _chunks(docs, 1024):
                    done += store.upsert(collection, chunk)
                    progress(f"[{name}] indexed {done}/{len(docs)} "
                             f"({time.perf_counter() - t0:.1f} s)")
                if not role:
                    index_s = time.perf_counter() - t0
                    report["timings"] = {"index_s": index_s,
                                         "docs_per_s": len(docs) / index_s if index_s else 0.0}

            # Embed the queries once, up front, when the embedder's cache can hold them:
            # then every mode's latency is the search itself, not "first mode embeds".
            options = {rr == "multivector" for _, rr in parsed.values()}
            texts = list(dict.fromkeys(q["text"] for q in judged))
            cached = _cache_room(embedder) >= len(texts) * len(options) + 1
            if cached:
                t0 = time.perf_counter()
                for mv in sorted(options):
                    for chunk in _chunks(texts):
                        embedder.embed(list(chunk), kind="query", dense=True, sparse=True,
                                       multivector=mv)
                report["timings"]["embed_queries_s"] = time.perf_counter() - t0
            report["timings"]["query_embeddings"] = "cached" if cached else "per query"

            judged_qrels = {q["id"]: qrels[q["id"]] for q in judged}
            for mode, (base, rerank) in parsed.items():
                store = stores["bm25" if base == "bm25" else ""]
                base = "sparse" if base == "bm25" else base
                run: dict[str, list[str]] = {}
                times = []
                store.search(collection, judged[0]["text"], mode=base, fusion=fusion,
                             k=search_k, rerank=rerank)  # warm-up, untimed
                for q in judged:
                    t0 = time.perf_counter()
                    hits = store.search(collection, q["text"], mode=base, fusion=fusion,
                                        k=search_k, rerank=rerank)
                    times.append((time.perf_counter() - t0) * 1000.0)
                    run[q["id"]] = [h.id for h in hits]
                scores = per_query(run, judged_qrels, k, recall_k)
                row = _mean(scores.values(), report["metrics"])
                row.update(queries=len(scores), search_s=sum(times) / 1000.0,
                           p50_ms=float(np.percentile(times, 50)),
                           mean_ms=float(np.mean(times)))
                kinds = sorted({q["kind"] for q in judged if q.get("kind")})
                if kinds:
                    row["by_kind"] = {kind: _mean([scores[q["id"]] for q in judged
                                                   if q.get("kind") == kind], report["metrics"])
                                      for kind in kinds}
                report["modes"][mode] = row
                progress(f"[{name}] {mode}: " + ", ".join(
                    f"{m} {row[m]:.3f}" for m in report["metrics"]) + f" ({row['search_s']:.1f} s)")
        finally:
            for store in stores.values():
                store.close()
    return report


class WithBm25:
    """An embedder seen with BM25 sparse vectors in place of its learned ones (dense and
    per-token vectors unchanged): what the ``bm25`` mode indexes and searches."""

    def __init__(self, embedder):
        from ..engine.bm25 import Bm25Sparse

        self._inner = embedder
        self._bm25 = Bm25Sparse()
        self.spec = replace(embedder.spec, sparse_head=None, splade=None, static_sparse=None)
        self.model = embedder.model

    def embed(self, texts, *, dense: bool = True, sparse: bool = False,
              multivector: bool = False, kind: str = "document", **options):
        from ..types import EmbedResult, Usage

        texts = [texts] if isinstance(texts, str) else list(texts)
        if dense or multivector:
            result = self._inner.embed(texts, dense=dense, sparse=False,
                                       multivector=multivector, kind=kind, **options)
        else:
            result = EmbedResult(self.model, None, None, None, Usage([0] * len(texts)))
        if not sparse:
            return result
        return replace(result, sparse=self._bm25.embed(texts, kind))

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _mean(rows: Iterable[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    rows = list(rows)
    return {n: (sum(r[n] for r in rows) / len(rows) if rows else 0.0) for n in names}


# -- parity --------------------------------------------------------------------------------
def _dense(embedder, texts: Sequence[str], kind: str) -> np.ndarray:
    parts = [np.asarray(embedder.embed(list(chunk), kind=kind, dense=True).dense, np.float32)
             for chunk in _chunks(texts)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = dots / (na * nb)
    return np.clip(np.where((na > 0) & (nb > 0), cos, 0.0), -1.0, 1.0)  # rounding


def _distribution(cos: np.ndarray) -> dict[str, float]:
    return {"min": float(cos.min()), "p1": float(np.percentile(cos, 1)),
            "p5": float(np.percentile(cos, 5)), "median": float(np.median(cos)),
            "mean": float(cos.mean())}


def compare(embedder_a, embedder_b, texts: Sequence[str] | None = None,
            kind: str = "document", threshold: float = 0.99, worst: int = 5) -> dict[str, Any]:
    """Embed the same texts with both embedders and report the per-text cosine between
    their dense vectors: min, p1, p5, median, mean, overall and per kind, plus the
    ``worst`` lowest texts. ``texts`` default to the generated corpus's documents
    (embedded as documents) and queries (as queries); given texts are embedded as
    ``kind``. ``ok`` is whether the lowest cosine reaches ``threshold``."""
    if texts is None:
        docs, queries, _ = generated()
        groups = {"document": [d["text"] for d in docs], "query": [q["text"] for q in queries]}
    else:
        if isinstance(texts, str):
            texts = [texts]
        groups = {kind: list(texts)}
    if not any(groups.values()):
        raise InvalidInputError("compare needs at least one text")
    report: dict[str, Any] = {"kind": "compare", "a": _describe(embedder_a),
                              "b": _describe(embedder_b), "threshold": threshold,
                              "by_kind": {}}
    all_cos, all_texts = [], []
    t0 = time.perf_counter()
    for group, items in groups.items():
        if not items:
            continue
        a, b = _dense(embedder_a, items, group), _dense(embedder_b, items, group)
        if a.shape != b.shape:
            raise InvalidOptionError(f"the embedders give vectors of different sizes "
                                     f"({a.shape[1]} vs {b.shape[1]}): {report['a']} and "
                                     f"{report['b']} are different models", "embedder")
        report["dim"] = int(a.shape[1])
        cos = _cosines(a, b)
        report["by_kind"][group] = {"texts": len(items), **_distribution(cos)}
        all_cos.append(cos)
        all_texts += [(group, t) for t in items]
    cos = np.concatenate(all_cos)
    report["seconds"] = time.perf_counter() - t0
    report["texts"] = int(cos.size)
    report["cosine"] = _distribution(cos)
    report["worst"] = [{"kind": all_texts[i][0], "text": all_texts[i][1],
                        "cosine": float(cos[i])} for i in np.argsort(cos, kind="stable")[:worst]]
    report["ok"] = bool(report["cosine"]["min"] >= threshold)
    return report


# -- printing ------------------------------------------------------------------------------
_LABELS = {"ndcg": "nDCG", "mrr": "MRR", "recall": "Recall"}


def _label(metric: str) -> str:
    name, _, cut = metric.partition("@")
    return f"{_LABELS.get(name, name)}@{cut}"


def format_report(report: dict[str, Any]) -> str:
    """Readable tables for a report from :func:`evaluate` or :func:`compare`."""
    if report.get("kind") == "compare":
        return _format_compare(report)
    metrics = report["metrics"]
    t = report["timings"]
    lines = [f"Evaluation of {report['model']} on {report['dataset']}: {report['docs']:,} "
             f"documents, {report['queries']:,} judged queries, store {report['store']}, "
             f"fusion {report['fusion']}, {report['recall_k']} hits per query",
             f"Indexed in {t.get('index_s', 0.0):.1f} s ({t.get('docs_per_s', 0.0):,.0f} "
             f"docs/s); query embeddings {t.get('query_embeddings', '?')}"
             + (f" ({t['embed_queries_s']:.1f} s)" if "embed_queries_s" in t else ""), ""]
    head = (f"{'mode':<16}" + "".join(f"{_label(m):>12}" for m in metrics)
            + f"{'queries':>9}{'p50 ms':>9}{'mean ms':>9}")
    lines += [head, "-" * len(head)]
    for mode, row in report["modes"].items():
        lines.append(f"{mode:<16}" + "".join(f"{row[m]:>12.4f}" for m in metrics)
                     + f"{row['queries']:>9}{row['p50_ms']:>9.2f}{row['mean_ms']:>9.2f}")
    kinds = sorted({k for row in report["modes"].values() for k in row.get("by_kind", {})})
    if kinds:
        lines += ["", "By query kind:"]
        head = f"{'mode':<16}" + "".join(f"{kind + ' ' + _label(m):>22}" for kind in kinds
                                         for m in metrics[::2])
        lines += [head, "-" * len(head)]
        for mode, row in report["modes"].items():
            by = row.get("by_kind", {})
            lines.append(f"{mode:<16}" + "".join(
                f"{by[kind][m]:>22.4f}" if kind in by else f"{'-':>22}"
                for kind in kinds for m in metrics[::2]))
    if report.get("missing_relevant_docs"):
        lines += ["", f"{report['missing_relevant_docs']} judged relevant document(s) are not "
                  "in the corpus; they count as not found."]
    lines += ["", "Latency: one query at a time through VectorStore.search (embedding included "
              "unless cached)."]
    return "\n".join(lines)


def _format_compare(report: dict[str, Any]) -> str:
    lines = [f"Parity of dense vectors: A = {report['a']}, B = {report['b']}, "
             f"{report.get('dim', '?')}-d, {report['texts']:,} texts "
             f"({report['seconds']:.1f} s)", ""]
    cols = ("min", "p1", "p5", "median", "mean")
    head = f"{'texts':<10}{'n':>7}" + "".join(f"{c:>10}" for c in cols)
    lines += [head, "-" * len(head)]
    rows = [("all", {"texts": report["texts"], **report["cosine"]})]
    if len(report["by_kind"]) > 1:
        rows += list(report["by_kind"].items())
    for label, row in rows:
        lines.append(f"{label:<10}{row['texts']:>7}" + "".join(f"{row[c]:>10.6f}" for c in cols))
    if report["worst"]:
        lines += ["", "Lowest cosines:"]
        for w in report["worst"]:
            text = w["text"] if len(w["text"]) <= 70 else w["text"][:67] + "..."
            lines.append(f"  {w['cosine']:.6f}  [{w['kind']}] {text}")
    verdict = ("OK: every text's vectors agree" if report["ok"] else
               "DIFFERENT: some vectors disagree; re-embed the collection before switching")
    lines += ["", f"{verdict} (min cosine {report['cosine']['min']:.6f}, threshold "
              f"{report['threshold']})"]
    return "\n".join(lines)
