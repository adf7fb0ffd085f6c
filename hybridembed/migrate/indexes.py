"""The HNSW index a migration builds on its new dense column: a name unique to that
column, and a build that ends with a *valid* index or an error.

The name comes from the database: the table's oid and the new column's ``attnum``
(PostgreSQL never reuses a column number within a table), so a second migration of the
same table gets another name — reused names made ``CREATE INDEX IF NOT EXISTS`` skip the
build and leave the live column with no index — while a rerun of the same swap finds the
index it started. ``CREATE INDEX CONCURRENTLY`` that is cancelled or killed leaves an
INVALID index behind (``pg_index.indisvalid`` false) that the planner never uses;
:func:`ensure_hnsw` drops such a leftover and builds again, then checks the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..pgcommon import dense_hnsw_ops
from .target import MigrationError, Target

NAME_MAX = 63  # PostgreSQL's identifier limit


@dataclass(frozen=True)
class IndexState:
    name: str
    exists: bool
    valid: bool


def column_dim(type_text: str) -> int:
    """``vector(384)`` / ``halfvec(3072)`` -> the dimension."""
    try:
        return int(type_text.split("(", 1)[1].rstrip(")"))
    except (IndexError, ValueError):
        raise MigrationError(f"cannot read a dimension from column type {type_text!r}") from None


def hnsw_name(conn, target: Target, column: str) -> str:
    """``<table>_<column>_hnsw_<table oid>_<attnum>``, cut to 63 characters from the
    readable front, never from the unique tail."""
    row = conn.execute("SELECT c.oid, a.attnum FROM pg_class c JOIN pg_attribute a ON "
                       "a.attrelid = c.oid WHERE c.oid = to_regclass(%s) AND a.attname = %s "
                       "AND NOT a.attisdropped", (target.regclass_text(), column)).fetchone()
    if row is None:
        raise MigrationError(f"column {column!r} not in table {target.table!r}")
    tail = f"_hnsw_{row[0]}_{row[1]}"
    return f"{target.table}_{target.column}"[:NAME_MAX - len(tail)] + tail


def index_state(conn, target: Target, name: str) -> IndexState:
    """Whether index ``name`` exists in the table's schema and ``pg_index.indisvalid``."""
    row = conn.execute(
        "SELECT i.indisvalid AND i.indisready FROM pg_index i JOIN pg_class c ON "
        "c.oid = i.indexrelid WHERE c.relname = %s AND c.relnamespace = (SELECT "
        "relnamespace FROM pg_class WHERE oid = to_regclass(%s))",
        (name, target.regclass_text())).fetchone()
    return IndexState(name, row is not None, bool(row and row[0]))


def ensure_hnsw(conn, target: Target, column: str, type_text: str) -> dict:
    """Make sure ``column`` (of ``type_text``, ``vector(D)`` or ``halfvec(D)``) has a
    valid HNSW cosine index; ``conn`` must be in autocommit (``CONCURRENTLY`` cannot run
    in a transaction block). Returns ``{"index": name or None, "built": bool, "rebuilt":
    bool, "valid": bool}``; ``index`` is None above pgvector's HNSW dimension limit.
    Raises :class:`MigrationError` if the index is still invalid after its build."""
    from psycopg import sql

    ops = dense_hnsw_ops(column_dim(type_text))
    if ops is None:
        return {"index": None, "built": False, "rebuilt": False, "valid": False,
                "note": f"{type_text} is over pgvector's HNSW limit: searched exactly"}
    name = hnsw_name(conn, target, column)
    state = index_state(conn, target, name)
    if state.valid:
        return {"index": name, "built": False, "rebuilt": False, "valid": True}
    qualified = (sql.Identifier(target.schema, name) if target.schema
                 else sql.Identifier(name))
    if state.exists:  # left INVALID by a cancelled or killed build
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(qualified))
    conn.execute(sql.SQL("CREATE INDEX CONCURRENTLY {i} ON {t} USING hnsw ({c} {ops})").format(
        i=sql.Identifier(name), t=target.table_sql(), c=sql.Identifier(column),
        ops=sql.SQL(ops)))
    if not index_state(conn, target, name).valid:
        raise MigrationError(f"index {name} is not valid after its build; run swap again")
    return {"index": name, "built": True, "rebuilt": state.exists, "valid": True}
