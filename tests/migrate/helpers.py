"""What the migration tests share: a table with an audit trigger that records every write
of a new vector (so "embedded once per version of the text" is read from the database),
the end-state check every fault scenario must pass, and ways to wait for a statement to
block and to send it a signal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import psycopg

from hybridembed.migrate.pgvector import PgMigration, Target

WORDS = "alpha beta gamma delta search vector index river city forest model".split()


def texts(n: int, seed: int = 3) -> list[str | None]:
    import random

    rng = random.Random(seed)
    out: list[str | None] = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30)))
                             for _ in range(n)]
    if n > 6:
        out[5], out[6] = None, ""  # skipped rows: nothing to embed
    return out


def make_table(dsn: str, name: str, n: int = 60, body_type: str = "text") -> None:
    """``name(id bigint primary key, body <body_type>, embedding vector(3))`` with ``n``
    rows (ids 1..n) whose old vectors are all [1,2,3]."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute(f"DROP TABLE IF EXISTS {name}, {name}_audit")
        c.execute(f"CREATE TABLE {name} (id bigint primary key, body {body_type}, "
                  "embedding vector(3))")
        with c.cursor() as cur:
            cur.executemany(f"INSERT INTO {name} VALUES (%s, %s, '[1,2,3]')",
                            list(enumerate(texts(n), start=1)))


def audit(dsn: str, name: str, column: str = "embedding") -> None:
    """Record ``(id, md5 of the text)`` on every write of ``<column>_hash__new`` (call
    after ``add``; the trigger follows the column through renames)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"CREATE TABLE IF NOT EXISTS {name}_audit (id bigint, version text)")
        c.execute(f"""CREATE OR REPLACE FUNCTION {name}_audit_fn() RETURNS trigger AS $$
            BEGIN INSERT INTO {name}_audit VALUES (NEW.id, md5(coalesce(NEW.body::text, '')));
            RETURN NEW; END $$ LANGUAGE plpgsql""")
        c.execute(f"DROP TRIGGER IF EXISTS {name}_audit_trg ON {name}")
        c.execute(f"CREATE TRIGGER {name}_audit_trg AFTER UPDATE OF {column}_hash__new ON "
                  f"{name} FOR EACH ROW EXECUTE FUNCTION {name}_audit_fn()")


def migration(dsn: str, table: str, embedder, batch: int = 10, sparse: bool = False,
              **kw) -> PgMigration:
    return PgMigration(dsn, Target(table, "id", "body", "embedding", sparse=sparse), embedder,
                       batch_size=batch, **kw)


def added(dsn: str, table: str, embedder, n: int = 40, batch: int = 10,
          backfill: bool = False) -> PgMigration:
    """A fresh :func:`make_table` of ``n`` rows with the new columns added and audited
    (and backfilled when ``backfill``): the start of most scenarios."""
    make_table(dsn, table, n=n)
    m = migration(dsn, table, embedder, batch=batch)
    m.add()
    audit(dsn, table)
    if backfill:
        m.backfill()
    return m


def vectors(dsn: str, table: str, column: str) -> dict[int, np.ndarray | None]:
    with psycopg.connect(dsn) as c:
        rows = c.execute(f"SELECT id, {column}::text FROM {table} ORDER BY id").fetchall()
    return {k: None if v is None else np.array(json.loads(v), np.float32) for k, v in rows}


def hnsw_indexes(dsn: str, table: str, column: str) -> list[tuple[str, bool]]:
    """``(index name, indisvalid)`` of the HNSW indexes on ``table.column``."""
    with psycopg.connect(dsn) as c:
        return c.execute(
            "SELECT ic.relname, i.indisvalid FROM pg_index i JOIN pg_class ic ON "
            "ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam JOIN pg_attribute a ON "
            "a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass "
            "AND a.attname = %s AND am.amname = 'hnsw' ORDER BY 1", (table, column)).fetchall()


def assert_converged(dsn: str, table: str, embedder, *, swapped: bool,
                     old_kept: bool | None = None) -> None:
    """The end state every scenario must reach: each row's new vector equals embedding
    its current text (NULL for empty text); each version of a row's text was written at
    most once and its current version exactly once; after a swap, one valid HNSW index
    on the live column and, unless ``old_kept`` is False, the old column kept."""
    column = "embedding" if swapped else "embedding__new"
    with psycopg.connect(dsn) as c:
        current = dict(c.execute(f"SELECT id, body::text FROM {table}").fetchall())
        versions = dict(c.execute(
            f"SELECT id, md5(coalesce(body::text, '')) FROM {table}").fetchall())
        writes = c.execute(f"SELECT id, version, count(*) FROM {table}_audit "
                           "GROUP BY 1, 2").fetchall()
    got = vectors(dsn, table, column)
    good = {k: t for k, t in current.items() if t and t.strip()}
    want = embedder.embed(list(good.values())).dense
    for row, key in enumerate(good):
        assert got[key] is not None, f"row {key} has no vector"
        np.testing.assert_allclose(got[key], want[row], atol=1e-5, err_msg=f"row {key}")
    assert all(got[k] is None for k in current if k not in good)
    assert [w for w in writes if w[2] != 1] == [], "a version of a text was written twice"
    written = {(k, v) for k, v, _ in writes}
    assert all((k, v) in written for k, v in versions.items()), "a current text never written"
    if swapped:
        indexes = hnsw_indexes(dsn, table, "embedding")
        assert len(indexes) == 1 and indexes[0][1], indexes
        if old_kept is not False:
            assert vectors(dsn, table, "embedding__old")[1] is not None
    if not swapped:
        assert migration(dsn, table, embedder).status()["remaining"] == 0


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def backend_running(dsn: str, prefix: str, waiting: bool = False) -> int | None:
    """The pid of a backend whose current statement starts with ``prefix`` (and, with
    ``waiting``, waits on a lock)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid() "
            "AND state = 'active'" + (" AND wait_event_type = 'Lock'" if waiting else ""),
            (prefix + "%",)).fetchone()
    return row[0] if row else None


STEP = textwrap.dedent("""
    import sys
    from hybridembed.migrate.pgvector import PgMigration, Target
    dsn, table, step, model = sys.argv[1:5]
    embedder = None
    if model != "-":  # add needs the model's spec only, as the CLI's add
        from types import SimpleNamespace
        from hybridembed.registry import resolve
        spec = resolve(model)
        embedder = SimpleNamespace(spec=spec, model=spec.name)
    m = PgMigration(dsn, Target(table, "id", "body", "embedding"), embedder)
    print("STARTED", flush=True)
    getattr(m, step)()
    print("DONE", flush=True)
""")


def start_step(dsn: str, table: str, step: str, model_dir=None) -> subprocess.Popen:
    """A child process running one migration step (``add``, ``swap``...), to be killed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", STEP, dsn, table, step,
                             str(model_dir) if model_dir else "-"],
                            stdout=subprocess.PIPE, text=True, env=env)
