"""PostgreSQL + pgvector adapter: every collection is a table, hybrid fusion is one SQL
statement.

Layout (all identifiers go through :class:`psycopg.sql.Identifier`, every value is a
query parameter):

* ``hybridembed_collections(name text primary key, meta jsonb)``: the catalogue; ``meta``
  is what :meth:`PgVectorBackend.create` was given (``meta["schema"]`` is a
  :class:`~hybridembed.stores.base.CollectionSchema` dict).
* ``<name>(key text primary key, text text, payload jsonb, dense vector(D),
  sparse sparsevec(S), multivector bytea, mv_tokens int)``: one row per document.
  ``dense`` is ``halfvec(D)`` when D > 2000 (pgvector's HNSW limit for ``vector``); above
  4000 dimensions (the ``halfvec`` limit) it gets no HNSW index and is searched exactly.
  The multi-vector is stored as little-endian float32 bytes, ``mv_tokens`` rows of
  ``multivector_dim``. Indexes: HNSW on ``dense`` (cosine; vectors are L2-normalised so
  the score ``1 - (dense <=> q)`` is the cosine similarity), HNSW on ``sparse``
  (``sparsevec_ip_ops``, score ``-(sparse <#> q)``, the inner product) and GIN on
  ``payload`` for filters.
* ``<name>_df(term bigint primary key, df int)``: BM25 document frequencies, only for
  ``sparse_kind == "bm25"``.

Sparse spaces. For ``"learned"`` sparse vectors ``S`` is the vocabulary size. BM25 indices
are 31-bit murmur hashes, beyond pgvector's largest ``sparsevec`` (10^9 dimensions), so
each index is mapped to ``index % 1_000_000_000`` and colliding entries are summed, for
documents and queries alike (``S`` = 10^9). pgvector's HNSW index takes sparse vectors of
at most 1000 non-zero entries: a document vector with more keeps its 1000 heaviest.

BM25 IDF. pgvector stores the document weights (term-frequency part) only, so the
adapter keeps document frequencies in ``<name>_df``: :meth:`~PgVectorBackend.write` and
:meth:`~PgVectorBackend.delete` adjust them by the difference between each record's
stored terms (read ``FOR UPDATE`` in the same transaction) and its new terms, so
re-upserting identical content changes nothing; df rows are updated in ascending term
order. Writers to one BM25 collection are serialised by a transaction-level advisory
lock, which also covers two writers inserting the same new key at once (a row that does
not exist yet cannot be locked). Queries weight each query term by Qdrant's IDF,
``ln((N - df + 0.5) / (df + 0.5) + 1)`` with ``N`` the row count, and rank documents by
inner product with the stored weights.

Queries. A hybrid query is one statement: a CTE per retriever (top ``candidates`` by
distance with ``row_number()`` as rank, the payload filter inside), a ``FULL OUTER JOIN``
on key and the fused score (RRF, weighted RRF or DBSF), which equals
:func:`hybridembed.stores.fusion.fuse` on the two ranked lists; ties break by key in
code-point order (``COLLATE "C"``), as ``fuse`` does. ``hnsw.ef_search`` is set to at
least ``candidates`` (at most 1000, pgvector's limit) and, on pgvector >= 0.8, HNSW
scans iterate (``hnsw.iterative_scan = strict_order``) until enough rows pass the payload
filter (and, for sparse, share a term with the query). A query with a multi-vector
reranks the fused top ``candidates`` by ColBERT MaxSim in Python. Multi-vectors are
stored only when the schema's ``multivector_dim`` is not 0.

Connections: a small pool of autocommit connections guarded by a lock; each call
borrows one, so a backend can be shared by threads. Processes each make their own.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import InvalidOptionError
from ..pgcommon import (
    BM25_SPACE,
    HALFVEC_INDEX_MAX_DIM,
    MAX_DIM,
    SPARSE_INDEX_MAX_NNZ,
    VECTOR_INDEX_MAX_DIM,
    map_bm25,
)
from ..scores import maxsim
from ..sparse import SparseVector, prune
from .base import (
    FUSIONS,
    MODES,
    Candidate,
    CollectionExistsError,
    CollectionNotFoundError,
    QuerySpec,
    Record,
    StoreError,
    check_name,
    check_records,
)

CATALOGUE = "hybridembed_collections"
EF_SEARCH_MAX = 1000
_POOL_IDLE = 8
MAINTENANCE_WORK_MEM = "512MB"  # an HNSW build is fast while the graph fits in it


def _psycopg():
    try:
        import psycopg
        from psycopg import sql
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise StoreError("the pgvector store needs psycopg 3 and pgvector: "
                         "pip install 'psycopg[binary]' pgvector") from exc
    return psycopg, sql


def bm25_idf(n: int, df: int) -> float:
    """Qdrant's IDF modifier."""
    return math.log((n - df + 0.5) / (df + 0.5) + 1.0)


class _Layout:
    """What a collection's schema means for its tables."""

    def __init__(self, name: str, meta: Mapping[str, Any]):
        schema = dict(meta.get("schema") or {})
        self.name = name
        self.dense_dim = int(schema.get("dense_dim") or 0)
        self.sparse_kind = schema.get("sparse_kind") or "learned"
        self.bm25 = self.sparse_kind == "bm25"
        vocab = int(schema.get("vocab_size") or 0)
        self.sparse_dim = BM25_SPACE if self.bm25 or vocab <= 0 else min(vocab, BM25_SPACE)
        self.multivector_dim = int(schema.get("multivector_dim") or 0)
        self.half = self.dense_dim > VECTOR_INDEX_MAX_DIM

    def check(self) -> None:
        if not 1 <= self.dense_dim <= MAX_DIM:
            raise InvalidOptionError(f"dense_dim must be 1 to {MAX_DIM} for pgvector, got "
                                     f"{self.dense_dim}", "schema")
        if self.sparse_kind not in ("learned", "bm25"):
            raise InvalidOptionError(f"unknown sparse_kind {self.sparse_kind!r}; valid: learned, "
                                     "bm25", "schema")

    def dense_param(self, dense: Any) -> Any:
        from pgvector import HalfVector, Vector

        arr = np.asarray(dense, dtype=np.float32).reshape(-1)
        if arr.size != self.dense_dim:
            raise ValueError(f"dense vector has {arr.size} dimensions, collection "
                             f"{self.name!r} has {self.dense_dim}")
        return HalfVector(arr) if self.half else Vector(arr)

    def doc_sparse(self, vector: SparseVector) -> SparseVector:
        """A document's sparse vector as stored: mapped (BM25), zero-free, at most 1000
        entries."""
        vector = map_bm25(vector) if self.bm25 else vector
        if len(vector) and int(vector.indices[-1]) >= self.sparse_dim:
            raise ValueError(f"sparse index {int(vector.indices[-1])} does not fit the "
                             f"vocabulary size {self.sparse_dim} of {self.name!r}")
        keep = vector.values != 0
        if not keep.all():
            vector = SparseVector(vector.indices[keep], vector.values[keep])
        if len(vector) > SPARSE_INDEX_MAX_NNZ:
            vector = prune(vector, top_k=SPARSE_INDEX_MAX_NNZ)
        return vector

    def query_sparse(self, vector: SparseVector) -> SparseVector:
        vector = map_bm25(vector) if self.bm25 else vector
        keep = (vector.indices < self.sparse_dim) & (vector.values != 0)
        return vector if keep.all() else SparseVector(vector.indices[keep], vector.values[keep])

    def sparse_param(self, vector: SparseVector) -> Any:
        from pgvector import SparseVector as PgSparse

        return PgSparse(vector.to_dict(), self.sparse_dim)


def _indexes(layout: _Layout) -> dict[str, Any]:
    """The collection's indexes by name, each as ``CREATE INDEX IF NOT EXISTS``: HNSW on
    ``dense`` (cosine) and ``sparse`` (inner product), GIN on ``payload``. The names are
    those PostgreSQL gives unnamed indexes (``<table>_<column>_idx``), so collections made
    before the names were explicit are recognised."""
    _, sql = _psycopg()
    name, table = layout.name, sql.Identifier(layout.name)
    methods = {"sparse": "hnsw (sparse sparsevec_ip_ops)",
               "payload": "gin (payload jsonb_path_ops)"}
    if layout.dense_dim <= HALFVEC_INDEX_MAX_DIM:
        ops = "halfvec_cosine_ops" if layout.half else "vector_cosine_ops"
        methods["dense"] = f"hnsw (dense {ops})"
    return {f"{name}_{column}_idx": sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING {}").format(
        sql.Identifier(f"{name}_{column}_idx"), table, sql.SQL(method))
        for column, method in methods.items()}


class PgVectorBackend:
    """:class:`~hybridembed.stores.base.StoreBackend` on PostgreSQL with pgvector."""

    kind = "pgvector"

    def __init__(self, dsn: str):
        psycopg, _ = _psycopg()
        self.dsn = dsn
        try:  # where collections are looked for, for messages (never the password)
            info = psycopg.conninfo.conninfo_to_dict(dsn)
            self.where = (f"database {info.get('dbname', '?')!r} on {info.get('host', 'localhost')}"
                          f":{info.get('port', 5432)}")
        except psycopg.ProgrammingError:
            self.where = "the database"
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False
        self._ready = False
        self._iterative_scan = False

    # -- connections --------------------------------------------------------------------
    def _connect(self) -> Any:
        psycopg, _ = _psycopg()
        from pgvector.psycopg import register_vector

        conn = psycopg.connect(self.dsn, autocommit=True)
        try:
            if not self._ready:
                self._setup(conn)
            register_vector(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _setup(self, conn: Any) -> None:
        """The extension and the catalogue, once per backend (idempotent, serialised
        across processes by an advisory lock)."""
        _, sql = _psycopg()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                         ("hybridembed:setup",))
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, "
                                 "meta jsonb NOT NULL)").format(sql.Identifier(CATALOGUE)))
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = %s",
                               ("vector",)).fetchone()
        version = tuple(int(p) for p in row[0].split(".")[:2] if p.isdigit())
        self._iterative_scan = version >= (0, 8)
        self._ready = True

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        psycopg, _ = _psycopg()
        with self._lock:
            if self._closed:
                raise StoreError("this pgvector store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = self._connect()
        healthy = False
        try:
            yield conn
            healthy = True
        except psycopg.errors.UndefinedTable as exc:
            healthy = True
            raise CollectionNotFoundError(f"collection table is missing: {exc}") from exc
        except psycopg.Error:
            healthy = not conn.broken
            raise
        finally:
            reusable = (healthy and not conn.closed
                        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
            with self._lock:
                if reusable and not self._closed and len(self._idle) < _POOL_IDLE:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> PgVectorBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- catalogue ----------------------------------------------------------------------
    def _meta(self, conn: Any, name: str, lock: bool = False) -> dict[str, Any]:
        _, sql = _psycopg()
        query = sql.SQL("SELECT meta FROM {} WHERE name = %s{}").format(
            sql.Identifier(CATALOGUE), sql.SQL(" FOR SHARE") if lock else sql.SQL(""))
        row = conn.execute(query, (name,)).fetchone()
        if row is None:
            names = [r[0] for r in conn.execute(sql.SQL("SELECT name FROM {} ORDER BY name")
                                                .format(sql.Identifier(CATALOGUE)))]
            raise CollectionNotFoundError(f"collection {name!r} does not exist in {self.where} "
                                          f"(pgvector store); existing there: "
                                          f"{', '.join(names) or 'none'}")
        return row[0]

    def _layout(self, conn: Any, name: str, lock: bool = False) -> _Layout:
        check_name(name)
        return _Layout(name, self._meta(conn, name, lock))

    def create(self, name: str, meta: dict[str, Any]) -> None:
        _, sql = _psycopg()
        from psycopg.types.json import Jsonb

        check_name(name)
        if name == CATALOGUE:
            raise InvalidOptionError(f"collection name {name!r} is reserved", "collection")
        layout = _Layout(name, meta)
        layout.check()
        table = sql.Identifier(name)
        dense_type = sql.SQL("{}({})").format(sql.SQL("halfvec" if layout.half else "vector"),
                                              sql.Literal(layout.dense_dim))
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                         ("hybridembed:catalogue",))
            if conn.execute(sql.SQL("SELECT 1 FROM {} WHERE name = %s").format(
                    sql.Identifier(CATALOGUE)), (name,)).fetchone():
                raise CollectionExistsError(f"collection {name!r} exists")
            tables = [name, f"{name}_df"] if layout.bm25 else [name]
            for tname in tables:
                if conn.execute("SELECT to_regclass(%s)",
                                (sql.Identifier(tname).as_string(conn),)).fetchone()[0]:
                    raise CollectionExistsError(
                        f"cannot create collection {name!r}: a table named {tname!r} exists in "
                        "the database")
            conn.execute(sql.SQL(
                "CREATE TABLE {} (key text PRIMARY KEY, text text NOT NULL, "
                "payload jsonb NOT NULL DEFAULT '{{}}', dense {}, sparse sparsevec({}), "
                "multivector bytea, mv_tokens int)").format(
                    table, dense_type, sql.Literal(layout.sparse_dim)))
            for statement in _indexes(layout).values():
                conn.execute(statement)
            if layout.bm25:
                conn.execute(sql.SQL("CREATE TABLE {} (term bigint PRIMARY KEY, df int NOT NULL)")
                             .format(sql.Identifier(f"{name}_df")))
            conn.execute(sql.SQL("INSERT INTO {} (name, meta) VALUES (%s, %s)").format(
                sql.Identifier(CATALOGUE)), (name, Jsonb(meta)))

    def list(self) -> list[str]:
        _, sql = _psycopg()
        with self._conn() as conn:
            rows = conn.execute(sql.SQL("SELECT name FROM {} ORDER BY name").format(
                sql.Identifier(CATALOGUE))).fetchall()
        return [r[0] for r in rows]

    def drop(self, name: str) -> None:
        _, sql = _psycopg()
        check_name(name)
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                         ("hybridembed:catalogue",))
            row = conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s RETURNING meta").format(
                sql.Identifier(CATALOGUE)), (name,)).fetchone()
            if row is None:
                raise CollectionNotFoundError(f"collection {name!r} does not exist in "
                                              f"{self.where} (pgvector store)")
            layout = _Layout(name, row[0])
            tables = [name, f"{name}_df"] if layout.bm25 else [name]
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in tables)))

    def meta(self, name: str) -> dict[str, Any]:
        check_name(name)
        with self._conn() as conn:
            return self._meta(conn, name)

    def update_meta(self, name: str, meta: dict[str, Any]) -> None:
        _, sql = _psycopg()
        from psycopg.types.json import Jsonb

        check_name(name)
        with self._conn() as conn:
            cur = conn.execute(sql.SQL("UPDATE {} SET meta = %s WHERE name = %s").format(
                sql.Identifier(CATALOGUE)), (Jsonb(meta), name))
            if cur.rowcount == 0:
                raise CollectionNotFoundError(f"collection {name!r} does not exist in "
                                              f"{self.where} (pgvector store)")

    # -- writing ------------------------------------------------------------------------
    def _lock_collection(self, conn: Any, name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     ("hybridembed:collection:" + name,))

    def _apply_df(self, conn: Any, name: str, delta: dict[int, int]) -> None:
        """Add ``delta`` to the df rows, in ascending term order; drop rows reaching 0."""
        _, sql = _psycopg()
        terms = sorted(t for t, d in delta.items() if d)
        if not terms:
            return
        table = sql.Identifier(f"{name}_df")
        conn.execute(sql.SQL(
            "INSERT INTO {t} AS d (term, df) SELECT term, df FROM unnest(%s::bigint[], "
            "%s::int[]) AS u(term, df) ORDER BY term "
            "ON CONFLICT (term) DO UPDATE SET df = d.df + EXCLUDED.df").format(t=table),
            (terms, [delta[t] for t in terms]))
        conn.execute(sql.SQL("DELETE FROM {} WHERE term = ANY(%s) AND df <= 0").format(table),
                     (terms,))

    def write(self, name: str, records: Sequence[Record]) -> None:
        _, sql = _psycopg()
        from psycopg.types.json import Jsonb

        check_records(records)
        if not records:
            with self._conn() as conn:
                self._layout(conn, name)
            return
        by_key = {str(r.key): r for r in records}  # last one wins
        keys = sorted(by_key)  # one lock order for every writer
        with self._conn() as conn, conn.transaction():
            layout = self._layout(conn, name, lock=True)
            rows, new_terms = [], {}
            for key in keys:
                rec = by_key[key]
                dense = None if rec.dense is None else layout.dense_param(rec.dense)
                sparse = None
                if rec.sparse is not None:
                    vec = layout.doc_sparse(rec.sparse)
                    new_terms[key] = vec.indices.tolist()
                    sparse = layout.sparse_param(vec)
                mv, tokens = None, None
                if rec.multivector is not None and layout.multivector_dim:
                    arr = np.ascontiguousarray(rec.multivector, dtype="<f4")
                    if arr.size == 0:
                        arr = arr.reshape(0, layout.multivector_dim)
                    if arr.ndim != 2 or arr.shape[1] != layout.multivector_dim:
                        raise ValueError(f"multi-vector of shape {arr.shape} does not fit "
                                         f"{name!r} (tokens, {layout.multivector_dim})")
                    mv, tokens = arr.tobytes(), int(arr.shape[0])
                rows.append((key, rec.text, Jsonb(dict(rec.payload or {})), dense, sparse, mv,
                             tokens))
            table = sql.Identifier(name)
            delta: dict[int, int] = {}
            if layout.bm25:
                self._lock_collection(conn, name)
                old = conn.execute(sql.SQL(
                    "SELECT key, sparse FROM {} WHERE key = ANY(%s) ORDER BY key FOR UPDATE")
                    .format(table), (keys,)).fetchall()
                for _, vec in old:
                    for t in (vec.indices() if vec is not None else ()):
                        delta[t] = delta.get(t, 0) - 1
                for terms in new_terms.values():
                    for t in terms:
                        delta[t] = delta.get(t, 0) + 1
            with conn.cursor() as cur:
                cur.executemany(sql.SQL(
                    "INSERT INTO {} (key, text, payload, dense, sparse, multivector, mv_tokens) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
                    "text = EXCLUDED.text, payload = EXCLUDED.payload, dense = EXCLUDED.dense, "
                    "sparse = EXCLUDED.sparse, multivector = EXCLUDED.multivector, "
                    "mv_tokens = EXCLUDED.mv_tokens").format(table), rows)
            if layout.bm25:
                self._apply_df(conn, name, delta)

    @contextmanager
    def bulk(self, name: str) -> Iterator[None]:
        """A bulk load: drop the HNSW indexes, let the caller write, build them again.
        pgvector maintains HNSW row by row on insert, several times slower than building
        the graph once. Readers meanwhile get exact (sequential) scans. The indexes are
        built again even when the load fails; if the process is killed, :meth:`optimize`
        (``hybridembed index`` runs it) builds whichever is missing."""
        _, sql = _psycopg()
        check_name(name)
        with self._conn() as conn, conn.transaction():
            self._layout(conn, name)
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}, {}").format(
                sql.Identifier(f"{name}_dense_idx"), sql.Identifier(f"{name}_sparse_idx")))
        try:
            yield
        finally:
            self.optimize(name)

    def optimize(self, name: str) -> bool:
        """Build whichever of the collection's indexes is missing, each on its own
        connection so the dense and sparse graphs build side by side; True if any was."""
        with self._conn() as conn:
            layout = self._layout(conn, name)
            present = {r[0] for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = %s", (name,)).fetchall()}
        missing = [s for index, s in _indexes(layout).items() if index not in present]

        def build(statement: Any) -> None:
            with self._conn() as conn, conn.transaction():
                conn.execute("SELECT set_config('maintenance_work_mem', %s, true)",
                             (MAINTENANCE_WORK_MEM,))
                conn.execute(statement)

        if missing:
            with ThreadPoolExecutor(len(missing)) as pool:
                list(pool.map(build, missing))
        return bool(missing)

    def delete(self, name: str, keys: Sequence[str]) -> int:
        _, sql = _psycopg()
        keys = sorted({str(k) for k in keys})
        with self._conn() as conn, conn.transaction():
            layout = self._layout(conn, name, lock=True)
            if not keys:
                return 0
            table = sql.Identifier(name)
            if not layout.bm25:
                return conn.execute(sql.SQL("DELETE FROM {} WHERE key = ANY(%s)").format(table),
                                    (keys,)).rowcount
            self._lock_collection(conn, name)
            gone = conn.execute(sql.SQL("DELETE FROM {} WHERE key = ANY(%s) RETURNING sparse")
                                .format(table), (keys,)).fetchall()
            delta: dict[int, int] = {}
            for (vec,) in gone:
                for t in (vec.indices() if vec is not None else ()):
                    delta[t] = delta.get(t, 0) - 1
            self._apply_df(conn, name, delta)
            return len(gone)

    def count(self, name: str) -> int:
        _, sql = _psycopg()
        with self._conn() as conn:
            self._layout(conn, name)
            return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(name))).fetchone()[0]

    def document_frequencies(self, name: str, terms: Sequence[int] | None = None
                             ) -> dict[int, int]:
        """BM25 df rows (mapped term -> df), all or those of ``terms`` (raw hash indices,
        mapped here). Empty for collections without BM25."""
        _, sql = _psycopg()
        with self._conn() as conn:
            layout = self._layout(conn, name)
            if not layout.bm25:
                return {}
            table = sql.Identifier(f"{name}_df")
            if terms is None:
                rows = conn.execute(sql.SQL("SELECT term, df FROM {}").format(table)).fetchall()
            else:
                mapped = sorted({int(t) % BM25_SPACE for t in terms})
                rows = conn.execute(sql.SQL("SELECT term, df FROM {} WHERE term = ANY(%s)")
                                    .format(table), (mapped,)).fetchall()
        return {int(t): int(d) for t, d in rows}

    # -- querying -----------------------------------------------------------------------
    def _bm25_query(self, conn: Any, layout: _Layout, vector: SparseVector) -> SparseVector:
        """Query weights times IDF; terms no document has are dropped."""
        _, sql = _psycopg()
        if not len(vector):
            return vector
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(layout.name))).fetchone()[0]
        rows = conn.execute(sql.SQL("SELECT term, df FROM {} WHERE term = ANY(%s)").format(
            sql.Identifier(f"{layout.name}_df")), (vector.indices.tolist(),)).fetchall()
        df = {int(t): int(d) for t, d in rows if d > 0}
        idx = [int(t) for t in vector.indices.tolist() if int(t) in df]
        weights = vector.to_dict()
        vals = [weights[t] * bm25_idf(n, df[t]) for t in idx]
        return SparseVector(np.asarray(idx, np.int64), np.asarray(vals, np.float32))

    @staticmethod
    def _filter_sql(flt: Mapping[str, Any] | None) -> tuple[list[Any], dict[str, Any]]:
        """Payload predicates compared as jsonb (``1`` never equals ``"1"``), all values as
        parameters: ``payload @> {"field": value}``; a list means any of its values."""
        _, sql = _psycopg()
        from psycopg.types.json import Jsonb

        parts, params = [], {}
        for i, (field, value) in enumerate((flt or {}).items()):
            if not isinstance(field, str):
                raise InvalidOptionError(f"invalid filter field {field!r}", "filter")
            ph = sql.Placeholder(f"f{i}")
            if isinstance(value, list | tuple | set | frozenset):
                parts.append(sql.SQL("payload @> ANY({}::jsonb[])").format(ph))
                params[f"f{i}"] = [Jsonb({field: v}) for v in value]
            else:
                parts.append(sql.SQL("payload @> {}::jsonb").format(ph))
                params[f"f{i}"] = Jsonb({field: value})
        return parts, params

    def _query_sql(self, layout: _Layout, spec: QuerySpec, use_dense: bool, use_sparse: bool,
                   filters: list[Any], rerank: bool) -> Any:
        _, sql = _psycopg()
        table = sql.Identifier(layout.name)

        def retriever(cte: str, dist: Any, score: Any, extra: list[Any]) -> Any:
            where = sql.SQL(" AND ").join([*extra, *filters]) if extra or filters else \
                sql.SQL("TRUE")
            return sql.SQL(
                "{cte} AS (SELECT key, {score} AS score, row_number() OVER "
                "(ORDER BY dist, key COLLATE \"C\") AS rank, {norm} AS norm FROM "
                "(SELECT key, {dist} AS dist FROM {table} WHERE {where} ORDER BY dist "
                "LIMIT %(n)s) AS x)").format(
                    cte=sql.Identifier(cte), score=score, dist=dist, table=table, where=where,
                    norm=norm(score))

        def norm(score: Any) -> Any:
            if spec.fusion != "dbsf" or not (use_dense and use_sparse):
                return sql.SQL("NULL::float8")
            sd = sql.SQL("stddev_samp({}) OVER ()").format(score)
            return sql.SQL(
                "CASE WHEN coalesce({sd}, 0) = 0 THEN 0.5::float8 ELSE ({s} - (avg({s}) OVER () "
                "- 3 * {sd})) / (6 * {sd}) END").format(s=score, sd=sd)

        ctes = []
        if use_dense:
            ctes.append(retriever("d", sql.SQL("dense <=> %(qd)s"), sql.SQL("1 - dist"),
                                  [sql.SQL("dense IS NOT NULL")]))
        if use_sparse:
            ctes.append(retriever("s", sql.SQL("sparse <#> %(qs)s"), sql.SQL("-dist"),
                                  [sql.SQL("(sparse <#> %(qs)s) < 0")]))
        if use_dense and use_sparse:
            if spec.fusion == "dbsf":  # each list normalised in its CTE, then summed
                parts = [sql.SQL("coalesce({}.norm, 0)").format(sql.Identifier(c))
                         for c in ("d", "s")]
            else:  # rrf / weighted: w / (rrf_k + rank), as fusion.rrf computes it
                parts = [sql.SQL("coalesce({w}::float8 / ({k} + {c}.rank), 0)").format(
                    w=sql.Placeholder("w" + c), k=sql.Placeholder("rrfk"), c=sql.Identifier(c))
                    for c in ("d", "s")]
            fused = sql.SQL(" + ").join(parts)
            fused_rel = sql.SQL(
                "SELECT coalesce(d.key, s.key) AS key, d.rank AS d_rank, d.score AS d_score, "
                "s.rank AS s_rank, s.score AS s_score, {fused} AS fused, "
                "coalesce(d.rank, s.rank) AS order_rank "
                "FROM d FULL OUTER JOIN s ON s.key = d.key").format(fused=fused)
            order = sql.SQL("f.fused DESC, f.key COLLATE \"C\"")
        else:
            c = "d" if use_dense else "s"
            cols = ("rank AS d_rank, score AS d_score, NULL::bigint AS s_rank, "
                    "NULL::float8 AS s_score") if use_dense else (
                    "NULL::bigint AS d_rank, NULL::float8 AS d_score, rank AS s_rank, "
                    "score AS s_score")
            fused_rel = sql.SQL("SELECT key, " + cols + ", score AS fused, rank AS order_rank "
                                "FROM {c}").format(c=sql.Identifier(c))
            order = sql.SQL("f.order_rank")
        mv = sql.SQL(", t.multivector, t.mv_tokens") if rerank else sql.SQL("")
        return sql.SQL(
            "WITH {ctes} SELECT f.key, f.fused, f.d_rank, f.d_score, f.s_rank, f.s_score, "
            "t.text, t.payload{mv} FROM ({fused_rel}) AS f JOIN {table} AS t ON t.key = f.key "
            "ORDER BY {order} LIMIT %(limit)s").format(
                ctes=sql.SQL(", ").join(ctes), mv=mv, fused_rel=fused_rel, table=table,
                order=order)

    def query(self, name: str, spec: QuerySpec) -> list[Candidate]:
        if spec.mode not in MODES:
            raise InvalidOptionError(f"unknown mode {spec.mode!r}; valid: {', '.join(MODES)}",
                                     "mode")
        if spec.fusion not in FUSIONS:
            raise InvalidOptionError(f"unknown fusion {spec.fusion!r}; valid: "
                                     f"{', '.join(FUSIONS)}", "fusion")
        k, candidates = int(spec.k), max(int(spec.candidates), 1)
        rerank = spec.multivector is not None
        filters, params = self._filter_sql(spec.filter)
        with self._conn() as conn, conn.transaction():
            layout = self._layout(conn, name)
            use_dense = spec.mode in ("dense", "hybrid")
            use_sparse = spec.mode in ("sparse", "hybrid")
            if use_dense:
                if spec.dense is None:
                    raise InvalidOptionError(f"mode {spec.mode!r} needs a dense query vector",
                                             "mode")
                params["qd"] = layout.dense_param(spec.dense)
            if use_sparse:
                if spec.sparse is None:
                    raise InvalidOptionError(f"mode {spec.mode!r} needs a sparse query vector",
                                             "mode")
                qs = layout.query_sparse(spec.sparse)
                if layout.bm25:
                    qs = self._bm25_query(conn, layout, qs)
                params["qs"] = layout.sparse_param(qs)
            w = tuple(spec.weights) if spec.fusion == "weighted" else (1.0, 1.0)
            params.update(n=candidates, limit=max(candidates, k) if rerank else k,
                          rrfk=int(spec.rrf_k), wd=float(w[0]), ws=float(w[1]))
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)",
                         (str(min(max(candidates, 40), EF_SEARCH_MAX)),))
            if self._iterative_scan:  # filters, and sparse rows with no shared term
                conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
            query = self._query_sql(layout, spec, use_dense, use_sparse, filters, rerank)
            rows = conn.execute(query, params).fetchall()
        out = []
        for row in rows:
            key, fused, d_rank, d_score, s_rank, s_score, text, payload = row[:8]
            retrievers: dict[str, dict[str, float]] = {}
            if d_rank is not None:
                retrievers["dense"] = {"rank": int(d_rank), "score": float(d_score)}
            if s_rank is not None:
                retrievers["sparse"] = {"rank": int(s_rank), "score": float(s_score)}
            cand = Candidate(key=key, score=float(fused), text=text, payload=payload or {},
                             retrievers=retrievers)
            if rerank:
                blob, tokens = row[8], row[9]
                if blob is None or not tokens:
                    doc = np.zeros((0, 0), np.float32)
                else:
                    doc = np.frombuffer(bytes(blob), dtype="<f4").reshape(int(tokens), -1)
                cand.score = maxsim(np.asarray(spec.multivector, np.float32), doc)
            out.append(cand)
        if rerank:
            out.sort(key=lambda c: (-c.score, c.key))
            for rank, cand in enumerate(out, start=1):
                cand.retrievers["multivector"] = {"rank": rank, "score": cand.score}
        return out[:k]
