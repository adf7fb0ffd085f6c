"""Migration of a user's PostgreSQL table, against a real PostgreSQL with real child
processes: the walk-through, kill -9 three times mid-backfill, two workers, swap under
readers, Ray. (The rest of the fault matrix: test_faults.py.)"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psycopg
import pytest

from hybridembed.migrate.pgvector import MigrationError, PgMigration, Target

N = 200
WORKER = textwrap.dedent("""
    import sys
    from hybridembed import Embedder
    from hybridembed.migrate.pgvector import PgMigration, Target
    dsn, table, model = sys.argv[1:4]
    m = PgMigration(dsn, Target(table, "id", "body", "embedding", sparse=True),
                    Embedder(model, device="cpu", cache_size=0), batch_size=int(sys.argv[4]))
    last = [0]
    def committed(stats):
        print("COMMITTED", stats.embedded + stats.skipped - last[0], flush=True)
        last[0] = stats.embedded + stats.skipped
    m.backfill(on_batch=committed)
    print("DONE", flush=True)
""")


def texts(n=N):
    rng = random.Random(3)
    words = "alpha beta gamma delta search vector index river city forest model".split()
    out = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 40))) for _ in range(n)]
    out[5], out[6] = None, ""  # bad rows: skipped and reported, never fatal
    return out


def make_table(dsn, name, n=N):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute(f"DROP TABLE IF EXISTS {name}")
        c.execute(f"CREATE TABLE {name} (id bigint primary key, body text, embedding vector(3))")
        with c.cursor() as cur:
            cur.executemany(f"INSERT INTO {name} VALUES (%s, %s, '[1,2,3]')",
                            list(enumerate(texts(n), start=1)))


def migration(dsn, table, model, batch=25):
    return PgMigration(dsn, Target(table, "id", "body", "embedding", sparse=True), model,
                       batch_size=batch)


def new_vectors(dsn, table, column="embedding__new"):
    with psycopg.connect(dsn) as c:
        rows = c.execute(f"SELECT id, {column}::text FROM {table} ORDER BY id").fetchall()
    return {k: None if v is None else np.array(json.loads(v), np.float32) for k, v in rows}


def expected_vectors(model):
    t = texts()
    good = [(i + 1, x) for i, x in enumerate(t) if x]
    dense = model.embed([x for _, x in good]).dense
    return {k: dense[j] for j, (k, _) in enumerate(good)}


def run_worker(dsn, table, model_dir, batch=25, kill_after=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", WORKER, dsn, table, str(model_dir),
                              str(batch)], stdout=subprocess.PIPE, text=True, env=env)
    committed = 0
    try:
        for line in child.stdout:
            if line.startswith("COMMITTED"):
                committed += int(line.split()[1])
                if kill_after is not None and committed >= kill_after:
                    child.send_signal(signal.SIGKILL)
                    break
    finally:
        child.wait(120)
    return committed


def test_walkthrough_plan_add_backfill_swap_rollback_drop(pg, tiny_m3):
    dsn = pg.get_uri()
    make_table(dsn, "walk")
    m = migration(dsn, "walk", tiny_m3, batch=64)
    plan = m.plan()
    assert plan["rows"] == N and plan["live_type"] == "vector(3)"
    assert m.add() == ["embedding__new", "embedding_sparse__new", "embedding_model__new",
                       "embedding_hash__new"]
    assert m.add() == []  # idempotent
    with pytest.raises(MigrationError, match="not embedded yet"):
        m.swap()
    stats = m.backfill()
    assert stats.embedded == N - 2 and sorted(stats.skipped_ids) == [6, 7]
    status = m.status()
    assert status["remaining"] == 0 and status["skipped"] == {"empty-text": 2}
    assert sorted(m.skipped()) == [(6, "empty-text"), (7, "empty-text")]
    assert m.backfill().embedded == 0  # nothing left: resumable means idempotent
    got, want = new_vectors(dsn, "walk"), expected_vectors(tiny_m3)
    for key, vec in want.items():
        np.testing.assert_allclose(got[key], vec, atol=1e-5)
    m.swap()
    assert m.status()["live"] == "vector(32)" and m.status()["old"] == "vector(3)"
    with psycopg.connect(dsn, autocommit=True) as c:  # a changed text is embedded again
        c.execute("UPDATE walk SET body = 'brand new text' WHERE id = 1")
    m.rollback()
    assert m.status()["live"] == "vector(3)" and m.status()["remaining"] == 1
    assert m.backfill().embedded == 1
    m.swap()
    with pytest.raises(MigrationError, match="--yes"):
        m.drop_old()
    assert m.drop_old(yes=True) == ["embedding__old"]
    with pytest.raises(MigrationError, match="nothing to roll back"):
        m.rollback()


def test_kill_9_three_times_then_resume(pg, tiny_m3, tiny_m3_dir):
    dsn = pg.get_uri()
    make_table(dsn, "killed")
    migration(dsn, "killed", tiny_m3).add()
    committed = 0
    for kill_after in random.Random(11).sample(range(25, 150, 25), 3):
        committed += run_worker(dsn, "killed", tiny_m3_dir, kill_after=kill_after)
    committed += run_worker(dsn, "killed", tiny_m3_dir)
    assert committed == N  # every row written exactly once across the four runs
    status = migration(dsn, "killed", tiny_m3).status()
    assert status["remaining"] == 0 and status["done"] == N
    got, want = new_vectors(dsn, "killed"), expected_vectors(tiny_m3)
    assert {k for k, v in got.items() if v is None} == {6, 7}
    for key, vec in want.items():
        np.testing.assert_allclose(got[key], vec, atol=1e-5)


def test_two_workers_share_the_work(pg, tiny_m3):
    """Two workers, each with its own connections, at once: SKIP LOCKED gives each row to
    exactly one of them."""
    dsn = pg.get_uri()
    make_table(dsn, "shared")
    migration(dsn, "shared", tiny_m3).add()
    results = []
    workers = [threading.Thread(target=lambda: results.append(
        migration(dsn, "shared", tiny_m3, batch=10).backfill())) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done = [r.embedded + r.skipped for r in results]
    assert sum(done) == N and min(done) > 0  # no row twice, none missed, both worked
    assert migration(dsn, "shared", tiny_m3).status()["remaining"] == 0


def test_rows_changed_behind_the_cursor_are_caught_before_the_end(pg, tiny_m3):
    """Batches follow the primary key from where the last one ended (a claim never walks
    the rows already done); the closing pass from the start re-embeds a row whose text
    changed behind the cursor during the run, and a second run finds nothing to do."""
    dsn = pg.get_uri()
    make_table(dsn, "cursor")
    job = migration(dsn, "cursor", tiny_m3, batch=25)
    job.add()

    row_one_redone_by = {}

    def change_row_one(stats):
        with psycopg.connect(dsn, autocommit=True) as c:
            if stats.batches == 2:  # rows 1-50 are done; the cursor is at 50
                c.execute("UPDATE cursor SET body = 'a river runs through the city' "
                          "WHERE id = 1")
            elif stats.batches == 3:
                row_one_redone_by[3] = c.execute(
                    "SELECT embedding_hash__new = md5(body) FROM cursor WHERE id = 1").fetchone()[0]

    stats = job.backfill(on_batch=change_row_one)
    assert row_one_redone_by == {3: False}  # batch 3 went on from row 51, not back to row 1
    assert stats.embedded + stats.skipped == N + 1  # row 1 twice: before and after its edit
    assert job.status()["remaining"] == 0
    want = tiny_m3.embed(["a river runs through the city"]).dense[0]
    np.testing.assert_allclose(new_vectors(dsn, "cursor")[1], want, atol=1e-5)
    again = job.backfill()
    assert again.embedded == again.skipped == again.batches == 0


def test_swap_while_reading(pg, tiny_m3):
    dsn = pg.get_uri()
    make_table(dsn, "reading")
    m = migration(dsn, "reading", tiny_m3, batch=100)
    m.add()
    m.backfill()
    seen, errors, stop = set(), [], threading.Event()

    def reader():
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                try:
                    nulls, lo, hi = c.execute(
                        "SELECT count(*) FILTER (WHERE embedding IS NULL AND body <> ''), "
                        "min(vector_dims(embedding)), max(vector_dims(embedding)) FROM reading"
                    ).fetchone()
                except psycopg.Error as exc:
                    errors.append(exc)
                    continue
                assert lo == hi  # never a mix of old and new vectors
                seen.add((nulls, lo))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for r in readers:
        r.start()
    time.sleep(0.2)
    m.swap()
    time.sleep(0.2)
    stop.set()
    for r in readers:
        r.join()
    assert not errors
    assert seen <= {(0, 3), (1, 3), (0, 32)} and (0, 32) in seen  # id 6 (NULL) has old vector


def test_cli_refuses_drop_without_yes(pg):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "hybridembed", "migrate", "drop-old", "--dsn",
                          pg.get_uri(), "--table", "walk", "--text-col", "body"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "--yes" in out.stderr


def test_ray_backfill_equals_single_process(pg, tiny_m3, tiny_m3_dir):
    pytest.importorskip("ray")
    from hybridembed.migrate.ray_backfill import backfill_with_ray

    dsn = pg.get_uri()
    make_table(dsn, "by_ray")
    make_table(dsn, "by_one")
    target = Target("by_ray", "id", "body", "embedding", sparse=True)
    PgMigration(dsn, target, tiny_m3).add()
    single = migration(dsn, "by_one", tiny_m3)
    single.add()
    single.backfill()
    result = backfill_with_ray(dsn, target, str(tiny_m3_dir), workers=2, batch_size=40)
    assert result["embedded"] == N - 2 and result["skipped"] == 2 and result["ranges"] == 5
    ray_rows, one_rows = new_vectors(dsn, "by_ray"), new_vectors(dsn, "by_one")
    assert ray_rows.keys() == one_rows.keys()
    for key, vec in one_rows.items():
        if vec is None:
            assert ray_rows[key] is None
        else:
            np.testing.assert_allclose(ray_rows[key], vec, atol=1e-5)
    with psycopg.connect(dsn) as c:
        a = c.execute("SELECT id, embedding_sparse__new::text, embedding_model__new FROM by_ray "
                      "ORDER BY id").fetchall()
        b = c.execute("SELECT id, embedding_sparse__new::text, embedding_model__new FROM by_one "
                      "ORDER BY id").fetchall()
    def parse(text):  # '{3:0.5,9:1.25}/300' -> {3: 0.5, 9: 1.25}
        body = text.split("}")[0].strip("{")
        return {int(k): float(v) for k, v in (p.split(":") for p in body.split(",") if p)}

    assert [(k, m) for k, _, m in a] == [(k, m) for k, _, m in b]
    for (_, sa, _), (_, sb, _) in zip(a, b, strict=True):
        if sa is None or sb is None:
            assert sa == sb
            continue
        pa, pb = parse(sa), parse(sb)
        assert pa.keys() == pb.keys()
        np.testing.assert_allclose([pa[k] for k in pa], [pb[k] for k in pa], atol=1e-5)
    assert backfill_with_ray(dsn, target, str(tiny_m3_dir))["embedded"] == 0  # nothing left
