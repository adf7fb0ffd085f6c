"""A row that cannot be embedded is recorded with its reason, never fatal; `status`
lists it, `backfill(retry_failed=True)` retries it, `swap` refuses until it is settled
(issue 14, item 2)."""

import numpy as np
import psycopg
import pytest

from hybridembed.errors import InvalidInputError, NonFiniteOutputError
from hybridembed.migrate.pgvector import MigrationError
from tests.migrate.helpers import assert_converged, audit, make_table, migration, vectors


class Poisoned:
    """The real embedder, except for texts holding "poison" (a non-finite output) and
    "refuse" (an error for that text). ``how`` is how the non-finite output shows:
    ``"raise"`` — NonFiniteOutputError with the others' results, as Embedder.embed
    raises it; ``"nan"`` — NaN returned as if fine (the migration must check anyway)."""

    def __init__(self, inner, how="raise"):
        self.inner, self.how = inner, how
        self.spec, self.model = inner.spec, inner.model

    def embed(self, texts, **kw):
        refused = [i for i, t in enumerate(texts) if "refuse" in t]
        if refused:
            raise InvalidInputError(f"text #{refused[0]} is refused", refused[0])
        bad = [i for i, t in enumerate(texts) if "poison" in t]
        if not bad:
            return self.inner.embed(texts, **kw)
        if self.how == "nan":
            result = self.inner.embed(texts, **kw)
            result.dense[bad[0], 0] = np.nan
            return result
        ok = [i for i in range(len(texts)) if i not in bad]
        partial = self.inner.embed([texts[i] for i in ok], **kw) if ok else None
        raise NonFiniteOutputError(bad, partial, ok)


def poison(dsn, table, rows):
    with psycopg.connect(dsn, autocommit=True) as c:
        for key, text in rows.items():
            c.execute(f"UPDATE {table} SET body = %s WHERE id = %s", (text, key))


@pytest.mark.parametrize("how", ["raise", "nan"])
def test_failed_rows_are_recorded_retried_and_block_swap(pg, tiny_m3, how):
    dsn = pg.get_uri()
    table = f"poisoned_{how}"
    make_table(dsn, table, n=30)
    poison(dsn, table, {3: "poison pill", 9: "please refuse this", 17: "more poison here"})
    m = migration(dsn, table, Poisoned(tiny_m3, how), batch=8)
    m.add()
    audit(dsn, table)
    stats = m.backfill()
    assert (stats.embedded, stats.skipped, stats.failed) == (25, 2, 3)
    status = m.status()
    assert (status["remaining"], status["failed"], status["done"]) == (0, 3, 27)
    assert status["failed_by_kind"] == {"non-finite-output": 2, "invalid-text": 1}
    reasons = dict(m.failures())
    assert sorted(reasons) == [3, 9, 17]
    assert reasons[3].startswith("non-finite-output") and "refused" in reasons[9]
    assert [f["key"] for f in status["failures"]] == [3, 9, 17]
    assert m.backfill().rows == 0  # failed rows wait for --retry-failed
    with pytest.raises(MigrationError, match="3 rows failed.*--retry-failed"):
        m.swap()
    healed = migration(dsn, table, tiny_m3, batch=8)
    again = healed.backfill(retry_failed=True)
    assert (again.embedded, again.failed) == (3, 0)
    assert healed.status()["failed"] == 0 and healed.failures() == []
    with psycopg.connect(dsn) as c:  # a failed version and its retry: two writes, no more
        assert c.execute(f"SELECT count(*) FROM {table}_audit WHERE id = 3").fetchone()[0] == 2
        c.execute(f"TRUNCATE {table}_audit")
        c.execute(f"INSERT INTO {table}_audit SELECT id, md5(coalesce(body::text, '')) "
                  f"FROM {table}")
        c.commit()
    healed.swap()
    assert_converged(dsn, table, tiny_m3, swapped=True)


def test_retry_that_fails_again_ends_and_force_swaps(pg, tiny_m3):
    dsn = pg.get_uri()
    make_table(dsn, "still_poisoned", n=12)
    poison(dsn, "still_poisoned", {2: "poison"})
    m = migration(dsn, "still_poisoned", Poisoned(tiny_m3), batch=4)
    m.add()
    assert m.backfill().failed == 1
    retried = m.backfill(retry_failed=True)  # fails again: recorded again, and it ends
    assert (retried.rows, retried.failed) == (1, 1)
    assert m.status()["failed"] == 1
    result = m.swap(force=True)
    assert result["valid"] and "embedding" in result["swapped"]
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT embedding FROM still_poisoned WHERE id = 2").fetchone()[0] is None
    with psycopg.connect(dsn, autocommit=True) as c:  # its text fixed: remaining, then done
        c.execute("UPDATE still_poisoned SET body = 'antidote' WHERE id = 2")
    m.rollback()
    assert m.status()["remaining"] == 1 and m.status()["failed"] == 0
    assert m.backfill().embedded == 1


def test_a_real_model_that_yields_nan_for_one_text(pg, nan_model):
    """The real Embedder over a tiny model whose output is NaN for one word: that row is
    recorded as failed, its batch's other rows are written."""
    from tests.models import POISONED_WORD

    dsn = pg.get_uri()
    make_table(dsn, "nan_rows", n=16)
    poison(dsn, "nan_rows", {4: f"the {POISONED_WORD} word", 12: f"{POISONED_WORD} again"})
    m = migration(dsn, "nan_rows", nan_model, batch=16)
    m.add()
    stats = m.backfill()
    assert (stats.embedded, stats.skipped, stats.failed, stats.batches) == (12, 2, 2, 1)
    assert [k for k, r in m.failures() if r.startswith("non-finite-output")] == [4, 12]
    got = {k: v for k, v in vectors(dsn, "nan_rows", "embedding__new").items()
           if v is not None}
    assert sorted(got) == [k for k in range(1, 17) if k not in (4, 6, 7, 12)]
    assert all(np.isfinite(v).all() for v in got.values())
