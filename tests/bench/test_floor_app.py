"""The bare uvicorn app ``hybridembed loadtest --floor`` times: it answers what the
embedder computes, as base64 float32 rows, through ASGI alone."""

import asyncio
import base64

import httpx
import numpy as np


def test_the_bare_app_answers_the_embedders_rows(tiny_m3_dir):
    from hybridembed.bench.floor_app import floor_app
    from hybridembed.service import Embedder

    emb = Embedder(str(tiny_m3_dir), cache_size=0)
    texts = ["hybrid search in one record", "a second, longer text about sparse vectors"]

    async def ask():
        transport = httpx.ASGITransport(app=floor_app(emb))
        async with httpx.AsyncClient(transport=transport, base_url="http://floor") as client:
            ready = await client.get("/ready")
            answer = await client.post("/v1/embeddings", json={
                "model": "any", "input": texts, "encoding_format": "base64"})
        return ready, answer

    ready, answer = asyncio.run(ask())
    assert ready.status_code == 200
    assert answer.status_code == 200
    assert int(answer.headers["content-length"]) == len(answer.content)
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
            for d in answer.json()["data"]]
    np.testing.assert_array_equal(np.stack(rows), emb.embed(texts).dense)


def test_the_bare_app_loads_the_model_as_the_server_does(monkeypatch):
    """A floor for the server must run the runtime as the server runs it: ONNX Runtime's
    threads spinning after a call (an in-process caller's default) delayed a lone client
    by ~0.8 ms here (docs/BENCHMARKS.md, session 10)."""
    import uvicorn

    import hybridembed.service
    from hybridembed.bench import floor_app
    from hybridembed.runtimes import serving_options

    loaded = []

    class Recorded:
        def __init__(self, model, **options):
            loaded.append((model, options))

        def embed(self, texts):
            return None

    monkeypatch.setattr(hybridembed.service, "Embedder", Recorded)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: loaded.append(kwargs))
    floor_app.main(["--model", "some-model", "--runtime", "onnx", "--port", "8123"])
    (model, options), served = loaded
    assert model == "some-model" and options["runtime"] == "onnx"
    assert options["cache_size"] == 0
    assert options["runtime_options"] == serving_options("onnx") != {}
    assert served["port"] == 8123 and served["access_log"] is False
