"""A real server on 127.0.0.1 (random port) for each configuration a test needs."""

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from hybridembed.config import Settings
from hybridembed.server import create_app


@contextmanager
def running_server(embedder, preloaded: dict | None = None, **settings):
    """A server of ``embedder`` (and the ``preloaded`` models, by name) with ``settings``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    app = create_app(Settings(port=port, **settings), embedder=embedder, models=preloaded)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def server_url(minilm):
    with running_server(minilm, max_body_bytes=256 * 1024, max_inputs=64) as url:
        yield url


@pytest.fixture
def client(server_url):
    with httpx.Client(base_url=server_url, timeout=60) as c:
        yield c
