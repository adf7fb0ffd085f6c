"""The live column ends with a valid HNSW index: names unique per migration, an INVALID
index left by a cancelled build is rebuilt (issue 14, item 3)."""

import threading

import psycopg
import pytest

from hybridembed.migrate.pgvector import MigrationError
from tests.migrate.helpers import (
    added,
    assert_converged,
    audit,
    backend_running,
    hnsw_indexes,
    make_table,
    migration,
    wait_for,
)


def test_second_migration_gets_its_own_valid_index(pg, tiny_m3):
    """Same table, same column, same vector type twice: the second swap must build its own
    index, not find the first one's name and skip (the live column had none)."""
    dsn = pg.get_uri()
    make_table(dsn, "twice", n=20)
    first = migration(dsn, "twice", tiny_m3)
    first.add()
    first.backfill()
    name_one = first.swap()["index"]
    second = migration(dsn, "twice", tiny_m3)
    assert second.add() == ["embedding__new", "embedding_model__new", "embedding_hash__new"]
    audit(dsn, "twice")
    second.backfill()
    with pytest.raises(MigrationError, match="drop-old"):  # refused before any index build
        second.swap()
    assert hnsw_indexes(dsn, "twice", "embedding__new") == []
    first.drop_old(yes=True)
    result = second.swap()
    assert result["index"] != name_one and result["built"] and result["valid"]
    assert hnsw_indexes(dsn, "twice", "embedding") == [(result["index"], True)]
    assert_converged(dsn, "twice", tiny_m3, swapped=True)


def test_cancelled_index_build_is_rebuilt(pg, tiny_m3):
    """CREATE INDEX CONCURRENTLY cancelled while it waits for an open transaction leaves an
    INVALID index; the next swap drops and rebuilds it, then renames."""
    dsn = pg.get_uri()
    m = added(dsn, "cancelled", tiny_m3, n=20, backfill=True)
    blocker = psycopg.connect(dsn)
    blocker.execute("UPDATE cancelled SET body = body WHERE id = 1")  # an open transaction
    errors = []
    swap = threading.Thread(target=lambda: errors.append(pytest.raises(psycopg.Error, m.swap)))
    swap.start()
    pid = wait_for(lambda: backend_running(dsn, "CREATE INDEX CONCURRENTLY", waiting=True),
                   what="the index build to wait")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SELECT pg_cancel_backend(%s)", (pid,))
    swap.join(60)
    blocker.rollback()
    blocker.close()
    assert errors and errors[0].type.__name__ == "QueryCanceled"
    [(name, valid)] = hnsw_indexes(dsn, "cancelled", "embedding__new")
    assert not valid
    assert m.status()["index"] == {"name": name, "exists": True, "valid": False}
    assert m.status()["live"] == "vector(3)"  # nothing renamed
    result = m.swap()
    assert result["index"] == name and result["rebuilt"] and result["valid"]
    assert_converged(dsn, "cancelled", tiny_m3, swapped=True)


def test_rollback_after_swap_keeps_both_indexes_and_swaps_forward_again(pg, tiny_m3):
    dsn = pg.get_uri()
    m = added(dsn, "back_and_forth", tiny_m3, n=20, backfill=True)
    built = m.swap()
    m.rollback()
    status = m.status()
    assert status["live"] == "vector(3)" and status["new"] == "vector(32)"
    assert status["index"]["valid"] and status["remaining"] == 0
    again = m.swap()  # the index is found valid: no second build
    assert again["index"] == built["index"] and not again["built"]
    assert_converged(dsn, "back_and_forth", tiny_m3, swapped=True)
