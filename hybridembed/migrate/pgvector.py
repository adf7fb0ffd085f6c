"""Re-embed a user's own PostgreSQL table (any table with a primary key and a text
column; its schema is the user's, not ours) into new vector columns, then swap them in.

Columns, for ``--column embedding`` (the live column readers use):

* live:  ``embedding`` [, ``embedding_sparse``, ``embedding_model``, ``embedding_hash``]
* new:   the same names with ``__new``: written by ``backfill``
* old:   the same names with ``__old``: kept by ``swap`` until ``drop-old``

Steps: ``add`` adds the new columns (idempotent); ``backfill`` fills them in batches of
rows ordered by primary key, claimed with ``FOR UPDATE SKIP LOCKED`` (so workers can run
side by side), each batch one short transaction — a row is done when its
``embedding_hash__new`` equals ``md5(text)``, so a killed run resumes where it stopped and
rows whose text changed are embedded again; ``swap`` builds the HNSW index
``CONCURRENTLY`` and renames live->old and new->live in one transaction (readers see the
old column or the new one, never half); ``rollback`` swaps back; ``drop-old`` is the only
destructive step. Bad rows (NULL/empty text, or over the model's limit with
``too_long="skip"``) are marked with a reason in ``embedding_model__new`` and reported,
never retried forever, never stopping the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import HybridEmbedError, InputTooLongError, InvalidOptionError

log = logging.getLogger(__name__)
SKIP_PREFIX = "skipped:"
SPARSE_BM25_DIM = 1_000_000_000


class MigrationError(HybridEmbedError):
    pass


def _md5(text: str | None) -> str:
    return hashlib.md5((text or "").encode("utf-8")).hexdigest()


@dataclass
class Target:
    """Where and what to write, from the table's point of view."""

    table: str
    id_col: str
    text_col: str
    column: str = "embedding"
    sparse: bool = False
    schema: str | None = None  # None: the search_path

    def slots(self) -> list[str]:
        base = [self.column]
        if self.sparse:
            base.append(f"{self.column}_sparse")
        return [*base, f"{self.column}_model", f"{self.column}_hash"]

    def new(self, slot: str) -> str:
        return slot + "__new"

    def old(self, slot: str) -> str:
        return slot + "__old"


@dataclass
class BackfillStats:
    embedded: int = 0
    skipped: int = 0
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0
    skipped_ids: list[Any] = field(default_factory=list)


class PgMigration:
    TRANSIENT = ("OperationalError", "InterfaceError", "AdminShutdown", "SerializationFailure",
                 "DeadlockDetected", "CannotConnectNow", "ConnectionTimeout")

    def __init__(self, dsn: str, target: Target, embedder=None, *, batch_size: int = 256,
                 too_long: str = "truncate", max_retries: int = 8):
        if too_long not in ("truncate", "skip"):
            raise InvalidOptionError(f"too_long must be truncate or skip, got {too_long!r}",
                                     "too_long")
        self.dsn = dsn
        self.t = target
        self.embedder = embedder
        self.batch_size = batch_size
        self.too_long = too_long
        self.max_retries = max_retries

    # -- plumbing -------------------------------------------------------------------------
    def _connect(self, autocommit: bool = False):
        import psycopg
        from pgvector.psycopg import register_vector

        conn = psycopg.connect(self.dsn, autocommit=autocommit)
        with contextlib.suppress(psycopg.ProgrammingError):  # `add` creates the extension
            register_vector(conn)
        return conn

    def _ident(self, name: str):
        from psycopg import sql

        return sql.Identifier(name)

    def _table(self):
        from psycopg import sql

        if self.t.schema:
            return sql.Identifier(self.t.schema, self.t.table)
        return sql.Identifier(self.t.table)

    def _columns(self, conn) -> dict[str, str]:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (f"{self.t.schema}.{self.t.table}" if self.t.schema
             else _quote_ident(self.t.table),)).fetchall()
        if not rows:
            raise MigrationError(f"table {self.t.table!r} not found")
        return dict(rows)

    def _check_table(self, conn) -> dict[str, str]:
        cols = self._columns(conn)
        for col in (self.t.id_col, self.t.text_col):
            if col not in cols:
                raise MigrationError(f"column {col!r} not in table {self.t.table!r}; columns: "
                                     + ", ".join(sorted(cols)))
        return cols

    def _dims(self) -> tuple[str, str | None]:
        spec = self.embedder.spec
        dense = f"{'halfvec' if spec.dim > 2000 else 'vector'}({spec.dim})"
        sparse = None
        if self.t.sparse:
            dim = spec.vocab_size if spec.has_learned_sparse else SPARSE_BM25_DIM
            sparse = f"sparsevec({dim})"
        return dense, sparse

    def _retrying(self, what: str, fn: Callable[[], Any], stats: BackfillStats | None = None):
        delay = 0.2
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except Exception as exc:
                transient = type(exc).__name__ in self.TRANSIENT
                if not transient or attempt == self.max_retries:
                    raise
                if stats:
                    stats.retries += 1
                wait = delay * (1 + random.random())
                log.warning("%s failed (%s: %s); retry %d in %.1f s", what, type(exc).__name__,
                            str(exc).strip().splitlines()[0] if str(exc) else "", attempt + 1,
                            wait)
                time.sleep(wait)
                delay = min(delay * 2, 10.0)

    # -- steps ----------------------------------------------------------------------------
    def plan(self) -> dict[str, Any]:
        with self._connect() as conn:
            cols = self._check_table(conn)
            total = conn.execute(self._sql("SELECT count(*) FROM {t}")).fetchone()[0]
        dense, sparse = self._dims()
        live = cols.get(self.t.column)
        return {"table": self.t.table, "rows": total, "live_column": self.t.column,
                "live_type": live, "new_columns": {self.t.new(self.t.column): dense,
                                                   **({self.t.new(f"{self.t.column}_sparse"):
                                                       sparse} if sparse else {})},
                "model": self.embedder.spec.hf_id or self.embedder.model,
                "existing_new_columns": sorted(c for c in cols if c.endswith("__new")),
                "existing_old_columns": sorted(c for c in cols if c.endswith("__old")),
                "steps": ["add", "backfill", "swap", "(rollback)", "drop-old --yes"]}

    def _sql(self, template: str, **idents):
        from psycopg import sql

        return sql.SQL(template).format(t=self._table(), **{k: self._ident(v)
                                                            for k, v in idents.items()})

    def add(self) -> list[str]:
        """Add the new columns; idempotent. Returns the columns added."""
        dense, sparse = self._dims()
        types = {self.t.column: dense, f"{self.t.column}_sparse": sparse,
                 f"{self.t.column}_model": "text", f"{self.t.column}_hash": "text"}
        added = []
        with self._connect() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            cols = self._check_table(conn)
            for slot in self.t.slots():
                name = self.t.new(slot)
                if name in cols:
                    if cols[name] != types[slot]:
                        raise MigrationError(f"column {name} exists as {cols[name]}, not "
                                             f"{types[slot]}: another migration is in progress; "
                                             "finish it or drop that column")
                    continue
                from psycopg import sql

                conn.execute(sql.SQL("ALTER TABLE {t} ADD COLUMN {c} " + types[slot]).format(
                    t=self._table(), c=self._ident(name)))
                added.append(name)
            conn.execute(self._sql("CREATE INDEX IF NOT EXISTS {i} ON {t} ({h})",
                                   i=f"{self.t.table}_{self.t.column}_hash__new_idx"[:63],
                                   h=self.t.new(f"{self.t.column}_hash")))
        return added

    def _claim(self, conn, ids: list | None = None, after: Any = None
               ) -> list[tuple[Any, str | None]]:
        """Lock and return rows not done yet: the next batch by primary key after the key
        ``after`` (from the start when None), or those of ``ids`` (a Ray worker's range).
        Rows another worker holds are skipped. Starting after the previous batch keeps a
        claim's cost to its own rows: from the start, every claim walked every row
        already done, which made a backfill quadratic in the table's size."""
        h = self.t.new(f"{self.t.column}_hash")
        where = "{h} IS DISTINCT FROM md5(coalesce({text}, ''))"
        if ids is None:
            start = "" if after is None else "{id} > %s AND "
            query = "SELECT {id}, {text} FROM {t} WHERE " + start + where + \
                " ORDER BY {id} LIMIT %s FOR UPDATE SKIP LOCKED"
            params: tuple = (self.batch_size,) if after is None else (after, self.batch_size)
        else:
            query = "SELECT {id}, {text} FROM {t} WHERE {id} = ANY(%s) AND " + where + \
                " ORDER BY {id} FOR UPDATE SKIP LOCKED"
            params = (list(ids),)
        return conn.execute(self._sql(query, id=self.t.id_col, text=self.t.text_col, h=h),
                            params).fetchall()

    def pending_ids(self) -> list[Any]:
        """Primary keys of the rows not done yet, in order (for splitting work)."""
        h = self.t.new(f"{self.t.column}_hash")
        with self._connect() as conn:
            return [r[0] for r in conn.execute(self._sql(
                "SELECT {id} FROM {t} WHERE {h} IS DISTINCT FROM md5(coalesce({text}, '')) "
                "ORDER BY {id}", id=self.t.id_col, text=self.t.text_col, h=h)).fetchall()]

    def process_ids(self, ids: list) -> tuple[int, int]:
        """Embed and write the rows of ``ids`` not done yet, in one transaction (with
        retries). Returns (embedded, skipped)."""
        stats = BackfillStats()

        def once():
            with self._connect() as conn, conn.transaction():
                claimed = self._claim(conn, ids)
                if not claimed:
                    return 0, 0
                rows, skipped = self._embed_batch(claimed)
                self._write(conn, rows)
                return len(rows) - len(skipped), len(skipped)

        return self._retrying("batch of ids", once, stats)

    def _write(self, conn, rows: list[tuple]) -> None:
        from psycopg import sql

        sets = [self._ident(self.t.new(self.t.column))]
        if self.t.sparse:
            sets.append(self._ident(self.t.new(f"{self.t.column}_sparse")))
        names = sets + [self._ident(self.t.new(f"{self.t.column}_model")),
                        self._ident(self.t.new(f"{self.t.column}_hash"))]
        assignment = sql.SQL(", ").join(sql.SQL("{} = %s").format(n) for n in names)
        stmt = sql.SQL("UPDATE {t} SET {a} WHERE {id} = %s").format(
            t=self._table(), a=assignment, id=self._ident(self.t.id_col))
        with conn.cursor() as cur:
            cur.executemany(stmt, rows)

    def _embed_batch(self, claimed) -> tuple[list[tuple], list[Any]]:
        """Rows to write (values..., key) and the keys skipped."""
        model = self.embedder.spec.hf_id or self.embedder.model
        spec = self.embedder.spec
        dim = spec.vocab_size if spec.has_learned_sparse else SPARSE_BM25_DIM
        good = [(k, t) for k, t in claimed if isinstance(t, str) and t.strip()]
        bad = {k: "empty-text" for k, t in claimed if not (isinstance(t, str) and t.strip())}
        vectors = {}
        if good:
            texts = [t for _, t in good]
            try:
                result = self.embedder.embed(texts, dense=True, sparse=self.t.sparse,
                                             truncate=self.too_long == "truncate")
                ok = list(range(len(texts)))
            except InputTooLongError as exc:
                result, ok = exc.partial, exc.partial_indices
                for i in exc.too_long:
                    bad[good[i][0]] = "too-long"
            for row, i in enumerate(ok):
                key = good[i][0]
                sparse = result.sparse[row] if self.t.sparse else None
                if sparse is not None and not spec.has_learned_sparse:
                    from ..sparse import SparseVector

                    sparse = SparseVector.from_pairs(sparse.indices % SPARSE_BM25_DIM,
                                                     sparse.values, reduce="max")
                vectors[key] = (np.asarray(result.dense[row], np.float32),
                                sparse.to_pgvector(dim) if sparse is not None else None)
        rows = []
        texts_by_key = dict(claimed)
        for key, (dense, sparse) in vectors.items():
            values = [dense] + ([sparse] if self.t.sparse else [])
            rows.append((*values, model, _md5(texts_by_key[key]), key))
        for key, reason in bad.items():
            values = [None] + ([None] if self.t.sparse else [])
            rows.append((*values, SKIP_PREFIX + reason, _md5(texts_by_key[key]), key))
        return rows, list(bad)

    def backfill(self, max_batches: int | None = None,
                 progress: Callable[[int], None] | None = None,
                 on_batch: Callable[[BackfillStats], None] | None = None) -> BackfillStats:
        """Embed every row not yet done, one short transaction per batch. Batches follow
        the primary key from where the previous one ended; when none is left ahead, one
        more pass from the start picks up rows skipped while another worker held them (or
        whose text changed behind us); the job ends when that pass finds nothing."""
        stats = BackfillStats()
        began = time.perf_counter()
        conn = None
        after = None  # the last key of the previous batch
        while max_batches is None or stats.batches < max_batches:
            def one_batch(after=after):
                nonlocal conn
                if conn is None or conn.closed:
                    conn = self._connect()
                try:
                    with conn.transaction():
                        claimed = self._claim(conn, after=after)
                        if not claimed:
                            return 0, 0, [], None
                        rows, skipped = self._embed_batch(claimed)
                        self._write(conn, rows)
                    return len(rows) - len(skipped), len(skipped), skipped, claimed[-1][0]
                except Exception:
                    try:
                        conn.close()
                    finally:
                        conn = None
                    raise

            done, skipped, skipped_ids, last = self._retrying("backfill batch", one_batch, stats)
            if done == 0 and skipped == 0:
                if after is None:
                    break
                after = None  # nothing ahead: one pass from the start
                continue
            after = last
            stats.embedded += done
            stats.skipped += skipped
            stats.skipped_ids.extend(skipped_ids)
            stats.batches += 1
            if progress:
                progress(done + skipped)
            if on_batch:
                on_batch(stats)
        if conn is not None:
            conn.close()
        stats.seconds = time.perf_counter() - began
        return stats

    def status(self) -> dict[str, Any]:
        h = self.t.new(f"{self.t.column}_hash")
        m = self.t.new(f"{self.t.column}_model")
        with self._connect() as conn:
            cols = self._check_table(conn)
            total = conn.execute(self._sql("SELECT count(*) FROM {t}")).fetchone()[0]
            out: dict[str, Any] = {"table": self.t.table, "rows": total,
                                   "live": cols.get(self.t.column),
                                   "new": cols.get(self.t.new(self.t.column)),
                                   "old": cols.get(self.t.old(self.t.column))}
            if h in cols:
                rows = conn.execute(self._sql(
                    "SELECT {m}, count(*) FROM {t} WHERE {h} = md5(coalesce({text}, '')) "
                    "GROUP BY {m} ORDER BY 2 DESC", m=m, h=h, text=self.t.text_col)).fetchall()
                out["done_by_model"] = {k: n for k, n in rows if not str(k).startswith(
                    SKIP_PREFIX)}
                out["skipped"] = {k[len(SKIP_PREFIX):]: n for k, n in rows
                                  if str(k).startswith(SKIP_PREFIX)}
                out["done"] = sum(n for _, n in rows)
                out["remaining"] = total - out["done"]
        return out

    def skipped(self) -> list[tuple[Any, str]]:
        m = self.t.new(f"{self.t.column}_model")
        with self._connect() as conn:
            return [(k, r[len(SKIP_PREFIX):]) for k, r in conn.execute(self._sql(
                "SELECT {id}, {m} FROM {t} WHERE {m} LIKE %s ORDER BY {id}",
                id=self.t.id_col, m=m), (SKIP_PREFIX + "%",)).fetchall()]

    def _rename_all(self, conn, moves: list[tuple[str, str]]) -> None:
        from psycopg import sql

        for old, new in moves:
            conn.execute(sql.SQL("ALTER TABLE {t} RENAME COLUMN {a} TO {b}").format(
                t=self._table(), a=self._ident(old), b=self._ident(new)))

    def swap(self, force: bool = False) -> dict[str, Any]:
        """Index the new column, then new->live and live->old in one transaction."""
        st = self.status()
        if st.get("new") is None:
            raise MigrationError("nothing to swap: run `add` and `backfill` first")
        if st.get("remaining") and not force:
            raise MigrationError(f"{st['remaining']} rows are not embedded yet; finish "
                                 "`backfill` first (or pass force)")
        new_col = self.t.new(self.t.column)
        ops = "halfvec_cosine_ops" if st["new"].startswith("halfvec") else "vector_cosine_ops"
        index = f"{self.t.table}_{self.t.column}_hnsw_{_md5(st['new'])[:6]}"[:63]
        with self._connect(autocommit=True) as conn:  # CONCURRENTLY: no long write lock
            conn.execute(self._sql("CREATE INDEX CONCURRENTLY IF NOT EXISTS {i} ON {t} "
                                   "USING hnsw ({c} " + ops + ")", i=index, c=new_col))
        with self._connect() as conn, conn.transaction():
            cols = self._check_table(conn)
            if any(self.t.old(s) in cols for s in self.t.slots()):
                raise MigrationError("old columns from an earlier swap exist; `drop-old --yes` "
                                     "them (or `rollback`) before swapping again")
            moves = [(s, self.t.old(s)) for s in self.t.slots() if s in cols]
            moves += [(self.t.new(s), s) for s in self.t.slots() if self.t.new(s) in cols]
            self._rename_all(conn, moves)
        return {"swapped": [b for _, b in moves], "index": index}

    def rollback(self) -> dict[str, Any]:
        """Undo a swap: live->new, old->live (the migration's result stays as ``__new``)."""
        with self._connect() as conn, conn.transaction():
            cols = self._check_table(conn)
            if self.t.old(self.t.column) not in cols:
                raise MigrationError("nothing to roll back: no old columns (never swapped, or "
                                     "drop-old already ran)")
            moves = [(s, self.t.new(s)) for s in self.t.slots() if s in cols]
            moves += [(self.t.old(s), s) for s in self.t.slots() if self.t.old(s) in cols]
            self._rename_all(conn, moves)
        return {"restored": [b for _, b in moves if not b.endswith("__new")]}

    def drop_old(self, yes: bool = False) -> list[str]:
        if not yes:
            raise MigrationError("drop-old deletes the previous vectors for good; pass --yes")
        from psycopg import sql

        with self._connect() as conn, conn.transaction():
            cols = self._check_table(conn)
            gone = [self.t.old(s) for s in self.t.slots() if self.t.old(s) in cols]
            for name in gone:
                conn.execute(sql.SQL("ALTER TABLE {t} DROP COLUMN {c}").format(
                    t=self._table(), c=self._ident(name)))
        return gone


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
