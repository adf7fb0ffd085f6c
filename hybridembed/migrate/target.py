"""What a PostgreSQL migration writes and how it names it: the user's table and columns
(:class:`Target`), the live / ``__new`` / ``__old`` column names, the per-row state kept
in the ``<column>_model`` column, and the one SQL expression that says which version of a
row's text was embedded.

Progress is decided by the database alone. A row is *done* when its
``<column>_hash__new`` equals :func:`text_hash` evaluated on the row now; the backfill
writes that column with the same SQL expression, in the transaction that holds the row
locked. Python never hashes text: a hash computed in Python disagreed with PostgreSQL's
view of the text for ``char(n)`` (blank padding) and non-UTF-8 server encodings, and a
backfill trusting it re-embedded the same rows forever. ``{text}::text`` is the text as
PostgreSQL sees it for ``text``, ``varchar``, ``char(n)`` (padding removed), ``citext``
or any type with a text cast; ``md5`` hashes its bytes in the server's encoding.

Row state (``<column>_model__new``), meaningful only while the hash is current:

* the model name: embedded;
* ``skipped:<reason>``: nothing to embed (``empty-text``) or skipped on request
  (``too-long`` with ``too_long="skip"``); the vectors are NULL and that is the result;
* ``failed:<kind>: <message>``: the row could not be embedded (invalid text, non-finite
  model output, ...). The backfill goes on; ``backfill(retry_failed=True)`` retries;
  ``swap`` refuses while any row has failed unless forced.

A row whose text changes after it was written (another writer) has a stale hash again,
so it is *remaining* and the next pass embeds it anew.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import HybridEmbedError

SKIPPED = "skipped:"
FAILED = "failed:"


class MigrationError(HybridEmbedError):
    """A migration step cannot go on; the message says why and what to run instead."""


@dataclass
class Target:
    """Where and what to write, from the table's point of view: ``table`` (in ``schema``,
    or found on the search_path when None) keyed by the single-column primary key
    ``id_col``, embedding ``text_col`` into the live vector column ``column`` (plus
    ``<column>_sparse`` when ``sparse``)."""

    table: str
    id_col: str
    text_col: str
    column: str = "embedding"
    sparse: bool = False
    schema: str | None = None  # None: the search_path

    def slots(self) -> list[str]:
        """The live column names a migration owns, dense first."""
        base = [self.column]
        if self.sparse:
            base.append(self.sparse_slot)
        return [*base, self.model_slot, self.hash_slot]

    @property
    def sparse_slot(self) -> str:
        return f"{self.column}_sparse"

    @property
    def model_slot(self) -> str:
        return f"{self.column}_model"

    @property
    def hash_slot(self) -> str:
        return f"{self.column}_hash"

    def new(self, slot: str) -> str:
        return slot + "__new"

    def old(self, slot: str) -> str:
        return slot + "__old"

    def table_sql(self):
        from psycopg import sql

        if self.schema:
            return sql.Identifier(self.schema, self.table)
        return sql.Identifier(self.table)

    def regclass_text(self) -> str:
        """The table as ``to_regclass`` reads it (quoted, so case and dots survive)."""
        if self.schema:
            return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"
        return quote_ident(self.table)

    def sql(self, template: str, **idents: str):
        """``template`` with ``{t}`` the table, ``{id}``/``{text}`` the key and text
        columns, ``{h}``/``{m}`` the new hash and state columns, ``{expr}`` the
        :func:`text_hash` expression and ``{name}=column`` for any other identifier."""
        from psycopg import sql

        names = {"id": self.id_col, "text": self.text_col,
                 "h": self.new(self.hash_slot), "m": self.new(self.model_slot), **idents}
        return sql.SQL(template).format(t=self.table_sql(), expr=text_hash(self),
                                        **{k: sql.Identifier(v) for k, v in names.items()})


def text_hash(target: Target):
    """The SQL expression naming the version of a row's text: ``md5`` of the text as
    PostgreSQL sees it (NULL counts as ''). The only definition of "the text changed"."""
    from psycopg import sql

    return sql.SQL("md5(coalesce({}::text, ''))").format(sql.Identifier(target.text_col))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
