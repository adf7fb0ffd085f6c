"""Concurrency, overload, auth, limits and a bad-input matrix against a real server."""

import base64
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.server.conftest import running_server


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text,
                                            re.M))


def test_64_concurrent_single_text_clients_are_batched(server_url, minilm):
    texts = [f"concurrent request number {i} about topic {i * 7 % 13}" for i in range(64)]
    expected = minilm.embed(texts, dimensions=96).dense  # other options: no cache sharing
    before = httpx.get(server_url + "/metrics").text

    def call(i):
        with httpx.Client(base_url=server_url, timeout=60) as c:
            r = c.post("/v1/embed", json={"inputs": [texts[i]], "dimensions": 96})
            return i, r.status_code, r.json()

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(call, range(64)))
    for i, status, body in answers:
        assert status == 200
        np.testing.assert_allclose(body["data"][0]["dense"], expected[i], atol=1e-5)
    after = httpx.get(server_url + "/metrics").text
    batches = _metric(after, "hybridembed_batch_texts_count") - _metric(
        before, "hybridembed_batch_texts_count")
    singles = (_metric(after, 'hybridembed_batch_texts_bucket{le="1.0"}')
               - _metric(before, 'hybridembed_batch_texts_bucket{le="1.0"}'))
    assert batches < 64 and batches - singles >= 1  # some batches held more than one text


@pytest.fixture(scope="module")
def uncached():
    """A second MiniLM without a result cache: what the server answers is computed in its
    own batches, never read back from an in-process call."""
    from hybridembed import Embedder

    return Embedder("minilm", device="cpu", cache_size=0)


def _ask(c, protocol: str, texts: list[str]) -> list[list[float]]:
    """Embed ``texts`` (dimensions 128) through one protocol; the dense rows."""
    if protocol == "openai-float":
        r = c.post("/v1/embeddings", json={"model": "minilm", "input": texts, "dimensions": 128})
        assert r.status_code == 200, r.text
        return [d["embedding"] for d in r.json()["data"]]
    if protocol == "openai-base64":
        r = c.post("/v1/embeddings", json={"model": "minilm", "input": texts, "dimensions": 128,
                                           "encoding_format": "base64"})
        assert r.status_code == 200, r.text
        return [np.frombuffer(base64.b64decode(d["embedding"]), "<f4").tolist()
                for d in r.json()["data"]]
    if protocol == "ollama":
        r = c.post("/api/embed", json={"model": "minilm", "input": texts, "dimensions": 128})
        assert r.status_code == 200, r.text
        return r.json()["embeddings"]
    if protocol == "tei":
        r = c.post("/embed", json={"inputs": texts, "dimensions": 128})
        assert r.status_code == 200, r.text
        return r.json()
    r = c.post("/v1/embed", json={"inputs": texts, "dimensions": 128})
    assert r.status_code == 200, r.text
    return [d["dense"] for d in r.json()["data"]]


def test_sustained_mixed_load_gives_each_client_its_own_vectors(uncached, minilm):
    """16 clients, 6 requests each one after another, every protocol, 1-3 texts per
    request: each answer equals in-process, rows in the order sent, and every request's
    stages are on /metrics."""
    protocols = ("openai-float", "openai-base64", "ollama", "tei", "native")
    jobs = [[[f"client {c} asks question {k} part {j} about {(c * k + j) % 7}"
              for j in range(1 + (c + k) % 3)] for k in range(6)] for c in range(16)]
    every = [t for client in jobs for texts in client for t in texts]
    expected = dict(zip(every, minilm.embed(every, dimensions=128).dense, strict=True))
    with running_server(uncached) as url:
        def client(c):
            with httpx.Client(base_url=url, timeout=120) as http:
                return [(texts, _ask(http, protocols[(c + k) % 5], texts))
                        for k, texts in enumerate(jobs[c])]

        before = httpx.get(url + "/metrics").text
        with ThreadPoolExecutor(16) as pool:
            answers = [a for per_client in pool.map(client, range(16)) for a in per_client]
        after = httpx.get(url + "/metrics").text
    for texts, rows in answers:
        assert len(rows) == len(texts)
        for text, row in zip(texts, rows, strict=True):
            np.testing.assert_allclose(row, expected[text], atol=1e-5)
    requests = len(answers)
    for stage in ("parse", "validate", "tokenize", "queue", "inference", "serialize", "write"):
        name = f'hybridembed_request_stage_seconds_count{{stage="{stage}"}}'
        assert _metric(after, name) - _metric(before, name) == requests, stage
    batches = _metric(after, "hybridembed_batch_texts_count") - _metric(
        before, "hybridembed_batch_texts_count")
    assert batches < requests  # requests were merged


def test_one_client_at_a_time_is_answered_unqueued_on_every_protocol(uncached, minilm,
                                                                     monkeypatch):
    """Requests one after another find the batcher idle and, once a batch has been timed,
    run at once in their own step: each protocol's answer equals in-process, each request
    is its own batch with every stage on /metrics, and a text over the limit gets the
    protocol's own error, the server carrying on after it."""
    protocols = ("openai-float", "openai-base64", "ollama", "tei", "native")
    # one text each: every request's predicted run is about the first one's (a third of
    # inline_max_seconds on the 2-core machine), however slow the machine
    jobs = [[f"one client asks question number {k}"] for k in range(10)]
    expected = minilm.embed([t for texts in jobs for t in texts], dimensions=128).dense
    from hybridembed.service.batcher import DynamicBatcher

    queued = []
    enqueue = DynamicBatcher.enqueue
    monkeypatch.setattr(DynamicBatcher, "enqueue",
                        lambda self, request, *a, **k: queued.append(request.texts)
                        or enqueue(self, request, *a, **k))
    with running_server(uncached) as url, httpx.Client(base_url=url, timeout=60) as http:
        _ask(http, "native", ["the first batch is timed on a worker"])  # as long
        assert len(queued) == 1  # nothing to predict its run from yet: queued
        before = http.get("/metrics").text
        answers = [_ask(http, protocols[k % 5], texts) for k, texts in enumerate(jobs)]
        after = http.get("/metrics").text
        too_long = [http.post("/embed", json={"inputs": LONG, "truncate": False}),
                    http.post("/api/embed", json={"model": "minilm", "input": LONG,
                                                  "truncate": False})]
        again = _ask(http, "tei", jobs[0])
    np.testing.assert_allclose([row for rows in answers for row in rows], expected, atol=1e-5)
    np.testing.assert_allclose(again, expected[:1], atol=1e-5)
    # none of the others was queued (an over-long text may be: predicted to run long)
    assert [texts for texts in queued if texts != (LONG,)] == queued[:1]
    for stage in ("parse", "validate", "tokenize", "queue", "inference", "serialize", "write"):
        name = f'hybridembed_request_stage_seconds_count{{stage="{stage}"}}'
        assert _metric(after, name) - _metric(before, name) == len(jobs), stage
    name = "hybridembed_batch_requests_count"
    assert _metric(after, name) - _metric(before, name) == len(jobs)
    assert [r.status_code for r in too_long] == [413, 400]
    assert too_long[0].json()["error_type"] and "token" in too_long[0].json()["error"]
    assert "token" in too_long[1].json()["error"]


def _requests_metric(url: str, route: str, status: int) -> float:
    return _metric(httpx.get(url + "/metrics").text,
                   f'hybridembed_requests_total{{route="{route}",status="{status}"}}')


def _post_and_leave(url: str, body: bytes, send: int | None = None,
                    path: str = "/v1/embeddings") -> None:
    """POST ``body`` to ``path`` on a raw socket (only its first ``send`` bytes) and close
    the connection without reading an answer."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body))
                     + body[:send])


def test_clients_that_leave_are_recorded_as_499_and_the_server_carries_on(uncached, minilm,
                                                                        monkeypatch):
    """A client that leaves mid-body (on the edge's shorter path or FastAPI's), or while
    its request waits in the queue behind a running batch, is recorded as 499 (client
    closed request), never as a server error or a bad request; the clients after it are
    answered."""
    import threading
    import time

    entered, release = threading.Event(), threading.Event()
    run = uncached.run

    def held(request, **options):  # the long request's batch runs until released
        if len(request.texts) > 1:
            entered.set()
            release.wait(60)
        return run(request, **options)

    monkeypatch.setattr(uncached, "run", held)
    body = json.dumps({"model": "minilm", "input": ["I will not wait for this"]}).encode()
    docs = "/v1/collections/{name}/documents"  # the route's label on /metrics
    with running_server(uncached) as url:
        def count(route, status):
            return _requests_metric(url, route, status)

        before = {(r, s): count(r, s) for r in ("/v1/embeddings", docs) for s in (400, 499, 500)}
        _post_and_leave(url, body, send=10)  # mid-body, the shorter path
        _post_and_leave(url, b'{"documents": [{"id": "1", "text": "x"}]}', send=10,
                        path="/v1/collections/kb/documents")
        busy = threading.Thread(target=httpx.post, args=(url + "/v1/embeddings",),
                                kwargs={"json": {"model": "minilm", "input": ["a", "b"]},
                                        "timeout": 120})
        busy.start()
        assert entered.wait(60)
        _post_and_leave(url, body)  # queued behind the held batch
        deadline = time.time() + 30
        while count("/v1/embeddings", 499) - before["/v1/embeddings", 499] < 2 \
                and time.time() < deadline:
            time.sleep(0.05)
        release.set()
        busy.join()
        after = {key: count(*key) for key in before}
        r = httpx.post(url + "/v1/embeddings", json={"model": "minilm", "input": "still here"})
    delta = {key: after[key] - before[key] for key in before}
    assert delta == {("/v1/embeddings", 400): 0, ("/v1/embeddings", 499): 2,
                     ("/v1/embeddings", 500): 0, (docs, 400): 0, (docs, 499): 1,
                     (docs, 500): 0}
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["data"][0]["embedding"],
                               minilm.embed(["still here"]).dense[0], atol=1e-5)


def test_float_vectors_read_back_to_the_same_float32():
    from hybridembed.server.wire import VectorsResponse

    rows = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    body = json.loads(VectorsResponse({"data": rows}).body)
    assert np.array_equal(np.asarray(body["data"], np.float32), rows)


def test_overload_refuses_cleanly_and_recovers(minilm, uncached):
    texts = [f"overload text {i} " + "filler words " * 60 for i in range(48)]
    expected = minilm.embed(texts, dimensions=200).dense
    # the server computes every text (no cache), so the queue of 3 really overflows
    with running_server(uncached, max_queued_requests=3) as url:
        def call(i):
            path, body = (("/api/embed", {"model": "minilm", "input": texts[i], "dimensions": 200})
                          if i % 2 else ("/v1/embed", {"inputs": texts[i], "dimensions": 200}))
            with httpx.Client(base_url=url, timeout=60) as c:
                r = c.post(path, json=body)
                return i, path, r

        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(call, range(48)))
        refused = [(p, r) for _, p, r in answers if r.status_code != 200]
        assert refused, "nothing was refused with a queue of 3"
        for path, r in refused:
            if path == "/api/embed":
                assert r.status_code == 503 and "server busy" in r.json()["error"]
            else:
                assert r.status_code == 429 and r.headers["retry-after"]
                assert "queue full" in r.json()["error"]["message"]
        for i, path, r in answers:
            if r.status_code == 200:
                got = r.json()["embeddings"][0] if path == "/api/embed" else r.json()["data"][0][
                    "dense"]
                np.testing.assert_allclose(got, expected[i], atol=1e-5)
        assert httpx.get(url + "/health").status_code == 200
        ok = httpx.post(url + "/v1/embed", json={"inputs": "after the storm"}, timeout=60)
        assert ok.status_code == 200


def test_list_and_single_inputs_count_the_same_at_admission(minilm):
    with running_server(minilm, max_queued_requests=4) as url:
        r = httpx.post(url + "/v1/embed", json={"inputs": ["x"] * 5}, timeout=60)
        assert r.status_code == 429  # five texts never fit a queue of four
        assert httpx.post(url + "/v1/embed", json={"inputs": ["x"] * 4}, timeout=60).status_code \
            == 200


def test_timeout_frees_the_slot(minilm):
    with running_server(minilm, request_timeout=0.001) as url:
        r = httpx.post(url + "/v1/embeddings", json={"model": "minilm",
                                                      "input": "slow " * 200}, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"


def test_auth(minilm):
    import openai

    with running_server(minilm, api_key="s3cret") as url:
        assert httpx.get(url + "/health").status_code == 200
        for path, body, shape in [
            ("/v1/embed", {"inputs": "x"}, lambda b: b["error"]["code"] == "invalid_api_key"),
            ("/api/embed", {"model": "minilm", "input": "x"}, lambda b: "API key" in b["error"]),
            ("/embed", {"inputs": "x"}, lambda b: b["error_type"] == "Authentication"),
        ]:
            r = httpx.post(url + path, json=body, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and shape(r.json())
        assert httpx.get(url + "/metrics").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope").embeddings.create(
                model="minilm", input="x")
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret").embeddings.create(
            model="minilm", input="x")
        assert len(good.data[0].embedding) == 384


LONG = "word " * 300
BAD = [
    # OpenAI shape: {"error": {"message", "type", "param", "code"}}
    ("/v1/embeddings", {"model": "minilm", "input": 123}, 400, "openai"),
    ("/v1/embeddings", {"model": "minilm"}, 400, "openai"),
    ("/v1/embeddings", {"input": "x"}, 400, "openai"),
    ("/v1/embeddings", {"model": "minilm", "input": []}, 400, "openai"),
    ("/v1/embeddings", {"model": "minilm", "input": ["a", None]}, 400, "openai"),
    ("/v1/embeddings", {"model": "minilm", "input": [[99999999]]}, 400, "openai"),
    ("/v1/embeddings", {"model": "minilm", "input": "x", "dimensions": 0}, 400, "openai"),
    ("/v1/embeddings", {"model": "minilm", "input": "x", "encoding_format": "hex"}, 400, "openai"),
    ("/v1/embeddings", {"model": "gpt-4", "input": "x"}, 404, "openai"),
    ("/v1/embeddings", b"{not json", 400, "openai"),
    ("/v1/embeddings", b"\xff\xfe\x00garbage", 400, "openai"),
    ("/v1/embeddings", {"model": "minilm", "input": ["x"] * 65}, 413, "openai"),
    ("/v1/embeddings", {"model": "minilm", "input": "y" * 300_000}, 413, "openai"),
    # Ollama shape: {"error": "..."}
    ("/api/embed", {"model": "minilm", "input": [1, 2]}, 400, "ollama"),
    ("/api/embed", {"input": "x"}, 400, "ollama"),
    ("/api/embed", {"model": "llama3", "input": "x"}, 404, "ollama"),
    ("/api/embed", {"model": "minilm", "input": LONG, "truncate": False}, 400, "ollama"),
    ("/api/embeddings", {"model": "minilm", "prompt": 5}, 400, "ollama"),
    ("/api/embed", b"[]", 400, "ollama"),
    # TEI shape: {"error", "error_type"}
    ("/embed", {}, 422, "tei"),
    ("/embed", {"inputs": []}, 400, "tei"),
    ("/embed", {"inputs": LONG, "truncate": False}, 413, "tei"),
    ("/embed", {"inputs": ["x"] * 65}, 413, "tei"),
    ("/embed", {"inputs": "x", "prompt_name": "passage"}, 422, "tei"),
    ("/embed", {"inputs": "x", "truncation_direction": "left"}, 422, "tei"),
    # native
    ("/v1/embed", {"inputs": "x", "kind": "passage"}, 400, "native"),
    ("/v1/embed", {"inputs": "x", "colour": "red"}, 400, "native"),
    ("/v1/embed", {"inputs": "x", "dense": False}, 400, "native"),
    ("/v1/embed", {"inputs": ["x", ["nested"]]}, 400, "native"),
    ("/v1/embed", {"inputs": "x", "model": "bge-m3"}, 404, "native"),
    ("/v1/nothing", {"inputs": "x"}, 404, "native"),
]


@pytest.mark.parametrize("path, shape", [("/v1/embeddings", "openai"),
                                         ("/v1/collections/kb/documents", "native"),
                                         ("/rerank", "tei")])
def test_a_chunked_body_over_the_limit_is_413_on_every_route(client, path, shape):
    """A body sent without a length (chunked) is cut off at --max-body-bytes with the same
    413 whichever way the route is served: the edge's shorter path (embeddings) or
    FastAPI's (collections, TEI's rerank)."""
    def chunks():
        yield b'{"input": "'
        for _ in range(40):
            yield b"x" * 8192
        yield b'"}'

    r = client.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    message = r.json()["error"] if shape == "tei" else r.json()["error"]["message"]
    assert "262144 bytes" in message


@pytest.mark.parametrize("path, body, status, shape", BAD,
                         ids=[f"{p}-{i}" for i, (p, *_) in enumerate(BAD)])
def test_bad_input_gets_a_clear_4xx_in_the_protocols_shape(client, path, body, status, shape):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    b = r.json()
    if shape in ("openai", "native"):
        assert set(b["error"]) == {"message", "type", "param", "code"} and b["error"]["message"]
    elif shape == "ollama":
        assert isinstance(b["error"], str) and b["error"]
    else:
        assert isinstance(b["error"], str) and b["error_type"]
