"""The edge's shorter way to the hot routes answers exactly what FastAPI's path answers:
the same results, the same errors for every bad body, the same headers."""

import json

import httpx
import pytest

from hybridembed.server import app as server_app
from hybridembed.server import fast_path
from tests.server.conftest import running_server

HOT = {"/v1/embeddings", "/embeddings", "/api/embed", "/api/embeddings", "/embed",
       "/embed_sparse", "/embed_all", "/v1/embed", "/v1/rerank", "/"}

REQUESTS = [
    # (path, body) — valid ones first, then what clients get wrong
    ("/v1/embeddings", {"model": "m", "input": ["one text", "two texts here"]}),
    ("/v1/embeddings", {"model": "m", "input": "x", "encoding_format": "base64",
                        "dimensions": 8}),
    ("/api/embed", {"model": "m", "input": ["ollama", "style"]}),
    ("/api/embeddings", {"model": "m", "prompt": "old ollama"}),
    ("/embed", {"inputs": ["tei", "route"], "normalize": False}),
    ("/embed_sparse", {"inputs": "sparse please"}),
    ("/v1/embed", {"texts": ["native"], "sparse": True, "multivector": True}),
    ("/v1/rerank", {"query": "q", "documents": ["a doc", "another doc"]}),
    ("/v1/embeddings", {"model": "m", "input": 5}),
    ("/v1/embeddings", {"model": "m"}),
    ("/v1/embeddings", {"model": "m", "input": ["ok"], "dimensions": "8"}),
    ("/v1/embeddings", {"model": "m", "input": [""]}),
    ("/v1/embeddings", {"model": "nope", "input": ["ok"]}),
    ("/api/embed", {"model": "m", "input": ["a"], "truncate": "yes"}),
    ("/embed", {"inputs": []}),
    ("/v1/embed", {"texts": ["a"], "surprise": 1}),
    ("/v1/rerank", {"query": "", "documents": []}),
]
RAW = [("/v1/embeddings", b"{not json"), ("/embed", b""), ("/v1/embed", b"[1, 2]"),
       ("/api/embed", b'{"model": "m", "input": ["a"]')]


@pytest.fixture(scope="module")
def both(tiny_m3):
    with running_server(tiny_m3, served_model_name="m") as fast, \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast_path, "fast_routes", lambda routes: {})
        with running_server(tiny_m3, served_model_name="m") as slow:
            yield fast, slow


def test_the_hot_routes_take_the_shorter_way():
    routes = fast_path.fast_routes([r for m in server_app.ROUTERS for r in m.router.routes])
    assert set(routes) >= HOT
    assert not [p for p in routes if "{" in p]


def _same(fast: httpx.Response, slow: httpx.Response):
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    for header in ("content-type", "retry-after", "allow"):
        assert fast.headers.get(header) == slow.headers.get(header)
    assert sorted(k for k in fast.headers if k.startswith("x-hybridembed")) == sorted(
        k for k in slow.headers if k.startswith("x-hybridembed"))
    return fast.json(), slow.json()


@pytest.mark.parametrize("path,body", REQUESTS, ids=[f"{p} {json.dumps(b)[:40]}"
                                                     for p, b in REQUESTS])
def test_same_answer_as_fastapis_path(both, path, body):
    fast, slow = (httpx.post(url + path, json=body, timeout=60) for url in both)
    got, want = _same(fast, slow)
    if fast.status_code == 200:
        _close(got, want)
    else:
        assert got == want


@pytest.mark.parametrize("path,raw", RAW)
def test_same_error_for_bodies_that_are_not_the_model(both, path, raw):
    fast, slow = (httpx.post(url + path, content=raw, timeout=60,
                             headers={"content-type": "application/json"}) for url in both)
    got, want = _same(fast, slow)
    assert got == want and fast.status_code in (400, 422)  # TEI answers 422


# Fields that differ between any two answers: timings and generated ids.
VARYING = ("total_duration", "load_duration", "id")


def _close(a, b):
    """Equal JSON, floats within 1e-6 (the two servers batch alike, but need not)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            if k not in VARYING:
                _close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y)
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-6
    else:
        assert a == b


def test_an_unexpected_error_is_answered_and_logged(both, monkeypatch, caplog):
    from hybridembed.server.core import ServerCore

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ServerCore, "request", staticmethod(broken))
    with caplog.at_level("ERROR", logger="hybridembed.server.fast_path"):
        fast, slow = (httpx.post(url + "/v1/embeddings", json={"model": "m", "input": "x"},
                                 timeout=60) for url in both)
    got, want = _same(fast, slow)
    assert fast.status_code == 500 and got == want
    assert any("unexpected error on /v1/embeddings" in r.getMessage()
               and r.exc_info for r in caplog.records)


def test_a_hot_route_never_enters_fastapis_middleware_stack(both, monkeypatch):
    """The edge sits in front of FastAPI's stack: a POST to a hot route goes from the server
    to the edge to the route, and only other requests enter FastAPI."""
    from fastapi import FastAPI

    entered = []
    call = FastAPI.__call__

    async def counting(self, scope, receive, send):
        entered.append(scope["path"])
        await call(self, scope, receive, send)

    monkeypatch.setattr(FastAPI, "__call__", counting)
    fast, _ = both
    assert httpx.post(fast + "/v1/embeddings", json={"model": "m", "input": "x"},
                      timeout=60).status_code == 200
    assert httpx.get(fast + "/health", timeout=60).status_code == 200
    assert entered == ["/health"]
