"""Re-embed a user's own PostgreSQL table (any table with a primary key and a text
column; its schema is the user's, not ours) into new vector columns, then swap them in.

Columns, for ``--column embedding`` (the live column readers use):

* live:  ``embedding`` [, ``embedding_sparse``, ``embedding_model``, ``embedding_hash``]
* new:   the same names with ``__new``: written by ``backfill``
* old:   the same names with ``__old``: kept by ``swap`` until ``drop-old``

Steps, each safe to kill and rerun (it converges to the same end state):

* ``add`` adds the new columns in one transaction (idempotent);
* ``backfill`` fills them in batches of rows ordered by primary key, claimed with
  ``FOR UPDATE SKIP LOCKED`` (workers can run side by side), each batch one short
  transaction. Whether a row is done is decided by the database (see
  :mod:`~hybridembed.migrate.target`), so a killed run resumes where it stopped, rows
  whose text changed meanwhile are embedded again, and a run always ends: every batch
  leaves its rows done, so only another writer's edits make more work, and a run makes
  at most ``max_passes`` passes, each up to the largest key at its start. Rows that
  cannot be embedded are recorded as failed with their reason and the job goes on;
* ``swap`` refuses while rows are remaining or failed (unless forced), makes sure the new
  dense column has a *valid* HNSW index (built ``CONCURRENTLY``; an invalid leftover of a
  killed build is rebuilt — :mod:`~hybridembed.migrate.indexes`), then renames live->old
  and new->live in one transaction (readers see the old columns or the new, never half);
* ``rollback`` swaps back; ``drop-old`` is the only destructive step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidOptionError
from ..pgcommon import dense_type, sparse_space
from .indexes import ensure_hnsw, index_state
from .retry import retrying
from .rows import embed_rows
from .target import FAILED, SKIPPED, MigrationError, Target

__all__ = ["BackfillStats", "MigrationError", "PgMigration", "Target"]

FAILURES_SHOWN = 20


@dataclass
class BackfillStats:
    """What one ``backfill`` call did: rows ``embedded``, ``skipped`` (nothing to embed)
    and ``failed`` (recorded with a reason), committed ``batches``, ``passes`` over the
    table, transient-error ``retries``, wall ``seconds``; ``skipped_ids`` and
    ``failed_rows`` ``(key, reason)`` of this call."""

    embedded: int = 0
    skipped: int = 0
    failed: int = 0
    batches: int = 0
    passes: int = 0
    retries: int = 0
    seconds: float = 0.0
    skipped_ids: list[Any] = field(default_factory=list)
    failed_rows: list[tuple[Any, str]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.embedded + self.skipped + self.failed


class PgMigration:
    """The steps of one migration of ``target`` on the database at ``dsn``. ``embedder``
    (a :class:`~hybridembed.service.Embedder`) is needed by ``plan``, ``add`` and
    ``backfill`` only. ``batch_size`` rows per transaction; ``too_long`` is
    ``"truncate"`` (cut texts to the model's limit) or ``"skip"``; ``max_retries`` per
    batch for transient database errors. Errors: :class:`MigrationError`,
    :class:`~hybridembed.errors.InvalidOptionError`, and ``psycopg.Error`` for what the
    database refused."""

    def __init__(self, dsn: str, target: Target, embedder=None, *, batch_size: int = 256,
                 too_long: str = "truncate", max_retries: int = 8):
        if too_long not in ("truncate", "skip"):
            raise InvalidOptionError(f"too_long must be truncate or skip, got {too_long!r}",
                                     "too_long")
        if batch_size < 1:
            raise InvalidOptionError(f"batch_size must be >= 1, got {batch_size}", "batch")
        self.dsn = dsn
        self.t = target
        self.embedder = embedder
        self.batch_size = batch_size
        self.too_long = too_long
        self.max_retries = max_retries
        self._encoding: str | None = None  # texts are fetched in: see _text_encoding

    # -- plumbing -------------------------------------------------------------------------
    def _connect(self, autocommit: bool = False):
        import psycopg
        from pgvector.psycopg import register_vector

        # UTF8 on every server encoding: PostgreSQL converts names and states to it (from
        # SQL_ASCII nothing converts, and psycopg would hand back bytes)
        conn = psycopg.connect(self.dsn, autocommit=autocommit, client_encoding="UTF8")
        with contextlib.suppress(psycopg.ProgrammingError):  # `add` creates the extension
            register_vector(conn)
        return conn

    def _columns(self, conn) -> dict[str, str]:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (self.t.regclass_text(),)).fetchall()
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

    def _model(self) -> str:
        return self.embedder.spec.hf_id or self.embedder.model

    def _types(self) -> dict[str, str | None]:
        spec = self.embedder.spec
        sparse = (f"sparsevec({sparse_space(spec.has_learned_sparse, spec.vocab_size)})"
                  if self.t.sparse else None)
        return {self.t.column: dense_type(spec.dim), self.t.sparse_slot: sparse,
                self.t.model_slot: "text", self.t.hash_slot: "text"}

    # -- plan / add -------------------------------------------------------------------------
    def plan(self) -> dict[str, Any]:
        with self._connect() as conn:
            cols = self._check_table(conn)
            total = conn.execute(self.t.sql("SELECT count(*) FROM {t}")).fetchone()[0]
        types = self._types()
        return {"table": self.t.table, "rows": total, "live_column": self.t.column,
                "live_type": cols.get(self.t.column),
                "new_columns": {self.t.new(s): types[s] for s in self.t.slots()},
                "model": self._model(),
                "existing_new_columns": sorted(c for c in cols if c.endswith("__new")),
                "existing_old_columns": sorted(c for c in cols if c.endswith("__old")),
                "steps": ["add", "backfill", "swap", "(rollback)", "drop-old --yes"]}

    def add(self) -> list[str]:
        """Add the new columns in one transaction; idempotent. Returns those added.
        Raises :class:`MigrationError` when a new column exists with another type
        (another migration of this column is under way)."""
        from psycopg import sql

        types = self._types()
        added = []
        with self._connect() as conn, conn.transaction():
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
                conn.execute(sql.SQL("ALTER TABLE {t} ADD COLUMN {c} {ty}").format(
                    t=self.t.table_sql(), c=sql.Identifier(name), ty=sql.SQL(types[slot])))
                added.append(name)
        return added

    # -- backfill -------------------------------------------------------------------------
    def _text_encoding(self, conn) -> str:
        """The encoding texts are fetched in: UTF-8, or the raw bytes of a ``SQL_ASCII``
        database (no conversion exists from it; :mod:`.rows` decides per row). Read once:
        a database's encoding never changes."""
        if self._encoding is None:
            server = conn.execute("SHOW server_encoding").fetchone()[0]
            self._encoding = "SQL_ASCII" if server == "SQL_ASCII" else "UTF8"
        return self._encoding

    def _claim(self, conn, ids: list | None = None, after: Any = None,
               retry_failed: bool = False, upto: Any = None) -> list[tuple[Any, bytes | None]]:
        """Lock and return ``(key, text bytes)`` of rows not done yet (and, with
        ``retry_failed``, rows that failed): the next batch by primary key after the key
        ``after`` (from the start when None) up to the key ``upto`` (no limit when None),
        or those of ``ids`` (a Ray worker's range). Rows another transaction holds are
        skipped."""
        where = "({h} IS DISTINCT FROM {expr}" + (" OR {m} LIKE %s)" if retry_failed else ")")
        params: list[Any] = [self._text_encoding(conn)]
        if ids is None:
            start = ("" if after is None else "{id} > %s AND ") + \
                ("" if upto is None else "{id} <= %s AND ")
            query = ("SELECT {id}, convert_to({text}::text, %s) FROM {t} WHERE " + start
                     + where + " ORDER BY {id} LIMIT %s FOR UPDATE SKIP LOCKED")
            params += [] if after is None else [after]
            params += [] if upto is None else [upto]
            params += [FAILED + "%"] if retry_failed else []
            params.append(self.batch_size)
        else:
            query = ("SELECT {id}, convert_to({text}::text, %s) FROM {t} WHERE {id} = ANY(%s) "
                     "AND " + where + " ORDER BY {id} FOR UPDATE SKIP LOCKED")
            params += [list(ids)] + ([FAILED + "%"] if retry_failed else [])
        return conn.execute(self.t.sql(query), params).fetchall()

    def _write(self, conn, claimed, verdicts) -> None:
        """One UPDATE per claimed row: vectors (or NULLs), the state, and the hash set by
        :func:`~.target.text_hash` itself, while the row is still locked. Raises
        :class:`MigrationError` if any row was not updated (a write that did not land
        must not pass for progress)."""
        from psycopg import sql

        names = [self.t.new(self.t.column)] + ([self.t.new(self.t.sparse_slot)]
                                               if self.t.sparse else [])
        sets = [sql.SQL("{} = %s").format(sql.Identifier(n)) for n in
                [*names, self.t.new(self.t.model_slot)]]
        stmt = sql.SQL("UPDATE {t} SET {sets}, {h} = {expr} WHERE {id} = %s").format(
            t=self.t.table_sql(), sets=sql.SQL(", ").join(sets),
            h=sql.Identifier(self.t.new(self.t.hash_slot)), expr=self.t.sql("{expr}"),
            id=sql.Identifier(self.t.id_col))
        model = self._model()
        rows = []
        for key, _ in claimed:
            if key in verdicts.vectors:
                dense, sparse = verdicts.vectors[key]
                state = model
            else:
                dense = sparse = None
                state = (SKIPPED + verdicts.skipped[key] if key in verdicts.skipped
                         else FAILED + verdicts.failed[key])
            rows.append((dense, *([sparse] if self.t.sparse else []), state, key))
        with conn.cursor() as cur:
            cur.executemany(stmt, rows)
            if cur.rowcount != len(rows):
                raise MigrationError(f"{len(rows) - cur.rowcount} of {len(rows)} claimed rows "
                                     "were not updated; is the primary key unique?")

    def _batch(self, conn, claimed):
        """Embed and write ``claimed`` rows; returns their :class:`~.rows.Verdicts`."""
        verdicts = embed_rows(self.embedder, claimed, sparse=self.t.sparse,
                              truncate=self.too_long == "truncate")
        self._write(conn, claimed, verdicts)
        return verdicts

    @staticmethod
    def _count(stats: BackfillStats, verdicts) -> None:
        stats.embedded += len(verdicts.vectors)
        stats.skipped += len(verdicts.skipped)
        stats.failed += len(verdicts.failed)
        stats.skipped_ids.extend(verdicts.skipped)
        stats.failed_rows.extend(verdicts.failed.items())
        stats.batches += 1

    def pending_ids(self, retry_failed: bool = False) -> list[Any]:
        """Primary keys of the rows not done yet (and failed ones with ``retry_failed``),
        in order (for splitting work)."""
        where = "{h} IS DISTINCT FROM {expr}" + (" OR {m} LIKE %s" if retry_failed else "")
        with self._connect() as conn:
            return [r[0] for r in conn.execute(self.t.sql(
                "SELECT {id} FROM {t} WHERE " + where + " ORDER BY {id}"),
                [FAILED + "%"] if retry_failed else None).fetchall()]

    def process_ids(self, ids: list, retry_failed: bool = False) -> BackfillStats:
        """Embed and write the rows of ``ids`` not done yet (and failed ones with
        ``retry_failed``) in one transaction, with retries."""
        stats = BackfillStats()

        def once():
            with self._connect() as conn, conn.transaction():
                claimed = self._claim(conn, ids, retry_failed=retry_failed)
                return self._batch(conn, claimed) if claimed else None

        verdicts = retrying("batch of ids", once, self.max_retries,
                            lambda: setattr(stats, "retries", stats.retries + 1))
        if verdicts is not None:
            self._count(stats, verdicts)
        return stats

    def backfill(self, max_batches: int | None = None,
                 progress: Callable[[int], None] | None = None,
                 on_batch: Callable[[BackfillStats], None] | None = None,
                 retry_failed: bool = False, max_passes: int = 3) -> BackfillStats:
        """Embed every row not yet done, one short transaction per batch, and return what
        was done. A pass walks the primary key from the start up to the largest key when
        it began, each batch starting after the previous one's last key. A pass that
        finds nothing ends the run; so does the end of pass ``max_passes``: later passes
        only pick up rows another writer changed (or held locked) meanwhile, so on a
        table written faster than it is embedded the run still ends, leaving those rows
        *remaining* for the next run. With ``retry_failed`` the first pass also takes the
        rows recorded as failed. ``progress(rows)`` and ``on_batch(stats)`` are called
        after each committed batch. Transient database errors are retried; others, and
        ``KeyboardInterrupt``, stop the run with every committed batch kept."""
        if max_passes < 1:
            raise InvalidOptionError(f"max_passes must be >= 1, got {max_passes}", "max_passes")
        stats = BackfillStats()
        began = time.perf_counter()
        conn = None

        def in_transaction(fn):
            def attempt():
                nonlocal conn
                if conn is None or conn.closed:
                    conn = self._connect()
                try:
                    with conn.transaction():
                        return fn(conn)
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                    raise

            return retrying("backfill batch", attempt, self.max_retries,
                            lambda: setattr(stats, "retries", stats.retries + 1))

        try:
            while stats.passes < max_passes:
                bound = in_transaction(lambda c: c.execute(
                    self.t.sql("SELECT max({id}) FROM {t}")).fetchone()[0])
                if bound is None:  # an empty table
                    break
                retry = retry_failed and stats.passes == 0
                stats.passes += 1
                after, found = None, 0  # the last key of the previous batch
                while max_batches is None or stats.batches < max_batches:
                    def one_batch(c, after=after, retry=retry, bound=bound):
                        claimed = self._claim(c, after=after, retry_failed=retry, upto=bound)
                        return (self._batch(c, claimed), claimed[-1][0]) if claimed else \
                            (None, None)

                    verdicts, last = in_transaction(one_batch)
                    if verdicts is None:
                        break
                    after = last
                    before = stats.rows
                    self._count(stats, verdicts)
                    found += stats.rows - before
                    if progress:
                        progress(stats.rows - before)
                    if on_batch:
                        on_batch(stats)
                if not found or (max_batches is not None and stats.batches >= max_batches):
                    break
        finally:
            if conn is not None:
                conn.close()
            stats.seconds = time.perf_counter() - began
        return stats

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Where the migration stands: ``rows``; the live/new/old dense column types;
        once ``add`` ran, ``done`` (embedded + skipped), ``remaining``, ``failed``,
        ``embedded_by_model``, ``skipped`` and ``failed_by_kind`` (counts by reason), the
        first 20 ``failures`` (``{"key", "reason"}``) and the new column's ``index``."""
        h = self.t.new(self.t.hash_slot)
        with self._connect() as conn:
            cols = self._check_table(conn)
            total = conn.execute(self.t.sql("SELECT count(*) FROM {t}")).fetchone()[0]
            out: dict[str, Any] = {"table": self.t.table, "rows": total,
                                   "live": cols.get(self.t.column),
                                   "new": cols.get(self.t.new(self.t.column)),
                                   "old": cols.get(self.t.old(self.t.column))}
            if h not in cols:
                return out
            states = conn.execute(self.t.sql(
                "SELECT CASE WHEN {h} IS DISTINCT FROM {expr} THEN NULL "
                "WHEN {m} LIKE %s THEN split_part({m}, ':', 2) ELSE {m} END, "
                "{m} LIKE %s, count(*) FROM {t} GROUP BY 1, 2 ORDER BY 3 DESC"),
                (FAILED + "%", FAILED + "%")).fetchall()
            out["remaining"] = sum(n for s, _, n in states if s is None)
            failed = {s: n for s, f, n in states if s is not None and f}
            done = [(s, n) for s, f, n in states if s is not None and not f]
            out["failed"] = sum(failed.values())
            out["done"] = sum(n for _, n in done)
            out["embedded_by_model"] = {s: n for s, n in done if not s.startswith(SKIPPED)}
            out["skipped"] = {s[len(SKIPPED):]: n for s, n in done if s.startswith(SKIPPED)}
            out["failed_by_kind"] = failed
            out["failures"] = [{"key": k, "reason": r} for k, r in
                               self._failures(conn, FAILURES_SHOWN)]
            if out["new"]:
                from .indexes import hnsw_name

                name = hnsw_name(conn, self.t, self.t.new(self.t.column))
                state = index_state(conn, self.t, name)
                out["index"] = {"name": name, "exists": state.exists, "valid": state.valid}
        return out

    def _failures(self, conn, limit: int | None) -> list[tuple[Any, str]]:
        rows = conn.execute(self.t.sql(
            "SELECT {id}, {m} FROM {t} WHERE {m} LIKE %s AND {h} = {expr} ORDER BY {id}"
            + (" LIMIT %s" if limit else "")),
            (FAILED + "%", limit) if limit else (FAILED + "%",)).fetchall()
        return [(k, r[len(FAILED):]) for k, r in rows]

    def failures(self, limit: int | None = None) -> list[tuple[Any, str]]:
        """``(key, reason)`` of the rows whose current text failed, by key."""
        with self._connect() as conn:
            return self._failures(conn, limit)

    def skipped(self) -> list[tuple[Any, str]]:
        """``(key, reason)`` of the rows skipped for their current text, by key."""
        with self._connect() as conn:
            return [(k, r[len(SKIPPED):]) for k, r in conn.execute(self.t.sql(
                "SELECT {id}, {m} FROM {t} WHERE {m} LIKE %s AND {h} = {expr} ORDER BY {id}"),
                (SKIPPED + "%",)).fetchall()]

    # -- swap / rollback / drop-old -------------------------------------------------------
    def _rename_all(self, conn, moves: list[tuple[str, str]]) -> None:
        from psycopg import sql

        for old, new in moves:
            conn.execute(sql.SQL("ALTER TABLE {t} RENAME COLUMN {a} TO {b}").format(
                t=self.t.table_sql(), a=sql.Identifier(old), b=sql.Identifier(new)))

    def swap(self, force: bool = False) -> dict[str, Any]:
        """Check, index, rename. Refuses (:class:`MigrationError`) when nothing was added,
        when old columns of an earlier swap still exist, or — unless ``force`` — while
        rows are remaining or failed. Then makes sure the new dense column has a valid
        HNSW index (built, or rebuilt when a killed build left it invalid) and renames
        live->old and new->live in one transaction. Returns the renamed columns and the
        index."""
        st = self.status()
        if st.get("new") is None:
            raise MigrationError("nothing to swap: run `add` and `backfill` first")
        if st.get("old") is not None:
            raise MigrationError("old columns from an earlier swap exist; `drop-old --yes` "
                                 "them (or `rollback`) before swapping again")
        if (st.get("remaining") or st.get("failed")) and not force:
            parts = [f"{st['remaining']} rows are not embedded yet (run `backfill`)"
                     if st["remaining"] else "",
                     f"{st['failed']} rows failed (`status` lists them; `backfill "
                     "--retry-failed` retries them)" if st["failed"] else ""]
            raise MigrationError("; ".join(p for p in parts if p) + "; or pass --force to "
                                 "swap anyway (those rows get NULL vectors)")
        with self._connect(autocommit=True) as conn:  # CONCURRENTLY: no long write lock
            index = ensure_hnsw(conn, self.t, self.t.new(self.t.column), st["new"])
        with self._connect() as conn, conn.transaction():
            cols = self._check_table(conn)
            if any(self.t.old(s) in cols for s in self.t.slots()):
                raise MigrationError("old columns from an earlier swap exist; `drop-old --yes` "
                                     "them (or `rollback`) before swapping again")
            if self.t.new(self.t.column) not in cols:
                raise MigrationError("the new columns are gone (swapped by another run?); "
                                     "`status` shows the table's state")
            moves = [(s, self.t.old(s)) for s in self.t.slots() if s in cols]
            moves += [(self.t.new(s), s) for s in self.t.slots() if self.t.new(s) in cols]
            self._rename_all(conn, moves)
        return {"swapped": [b for _, b in moves], **index}

    def rollback(self) -> dict[str, Any]:
        """Undo a swap: live->new, old->live (the migration's result stays as ``__new``,
        with its index)."""
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
        """Drop the ``__old`` columns (and their indexes) for good; needs ``yes``."""
        if not yes:
            raise MigrationError("drop-old deletes the previous vectors for good; pass --yes")
        from psycopg import sql

        with self._connect() as conn, conn.transaction():
            cols = self._check_table(conn)
            gone = [self.t.old(s) for s in self.t.slots() if self.t.old(s) in cols]
            for name in gone:
                conn.execute(sql.SQL("ALTER TABLE {t} DROP COLUMN {c}").format(
                    t=self.t.table_sql(), c=sql.Identifier(name)))
        return gone

