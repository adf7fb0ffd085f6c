"""Official clients, unmodified, against a real server: answers equal in-process ones."""

import numpy as np
import pytest

from hybridembed.backends import get_embedder
from hybridembed.errors import UnsupportedOutputError

TEXTS = ["Hybrid search keeps dense and sparse vectors together.", "BM25 finds exact keywords",
         "a third, quite different sentence about rivers and cities"]


def assert_same(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    cos = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert np.all(cos >= 0.9999), cos


def test_openai_sdk_base64_float_and_token_ids(server_url, minilm):
    import openai

    client = openai.OpenAI(base_url=server_url + "/v1", api_key="unused")
    expected = minilm.embed(TEXTS).dense
    default = client.embeddings.create(model="minilm", input=TEXTS)  # SDK asks for base64
    assert [d.index for d in default.data] == [0, 1, 2]
    assert_same([d.embedding for d in default.data], expected)
    assert default.usage.prompt_tokens == sum(minilm.embed(TEXTS).usage.tokens)
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[0],
                                      encoding_format="float")
    assert_same(floats.data[0].embedding, expected[0])
    from hybridembed.server.token_ids import cl100k

    ids = [cl100k().encode(t) for t in TEXTS[:2]]  # what OpenAI's clients send
    tokens = client.embeddings.create(model="minilm", input=ids)
    assert_same([d.embedding for d in tokens.data], expected[:2])
    one = client.embeddings.create(model="minilm", input=ids[0])
    assert_same(one.data[0].embedding, expected[0])
    short = client.embeddings.create(model="minilm", input=TEXTS[0], dimensions=64)
    assert len(short.data[0].embedding) == 64
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-large", input="x")
    assert client.models.list().data[0].id == "minilm"


def test_ollama_client(server_url, minilm):
    import ollama

    client = ollama.Client(host=server_url)
    expected = minilm.embed(TEXTS).dense
    out = client.embed(model="all-MiniLM-L6-v2", input=TEXTS)
    assert_same(out.embeddings, expected)
    assert out.prompt_eval_count == sum(minilm.embed(TEXTS).usage.tokens)
    single = client.embed(model="minilm", input=TEXTS[1])
    assert_same(single.embeddings[0], expected[1])
    legacy = client.embeddings(model="minilm", prompt=TEXTS[0])
    raw = minilm.embed(TEXTS[:1], normalize=False).dense[0]
    np.testing.assert_allclose(legacy.embedding, raw, atol=1e-5)
    assert any(m.model == "minilm:latest" for m in client.list().models)
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="llama3", input="x")
    assert err.value.status_code == 404


@pytest.mark.parametrize("backend", ["remote", "ollama", "openai"])
def test_client_backends_match_local(server_url, minilm, backend):
    url = server_url + ("/v1" if backend == "openai" else "")
    emb = get_embedder(backend, url=url, model="minilm")
    got = emb.embed(TEXTS)
    assert_same(got.dense, minilm.embed(TEXTS).dense)
    assert got.dense.shape == (3, 384) and len(got.usage.tokens) == 3
    if backend == "remote":
        full = emb.embed(TEXTS, sparse=True, multivector=True, kind="query")
        local = minilm.embed(TEXTS, sparse=True, multivector=True, kind="query")
        assert full.sparse == local.sparse
        for a, b in zip(full.multivector, local.multivector, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    else:
        with pytest.raises(UnsupportedOutputError, match="dense vectors only"):
            emb.embed(TEXTS, sparse=True)


def test_unknown_backend():
    with pytest.raises(ValueError, match="valid: local, remote, ollama, openai"):
        get_embedder("grpc")


def test_tei_routes(client, minilm):
    dense = client.post("/embed", json={"inputs": TEXTS}).json()
    assert_same(dense, minilm.embed(TEXTS).dense)
    sparse = client.post("/embed_sparse", json={"inputs": TEXTS[1]}).json()
    local = minilm.embed(TEXTS[1:2], dense=False, sparse=True).sparse[0]
    assert {d["index"]: pytest.approx(d["value"]) for d in sparse[0]} == local.to_dict()
    tokens = client.post("/embed_all", json={"inputs": "two words"}).json()
    assert np.asarray(tokens[0]).shape == (3, 384)
    tok = client.post("/tokenize", json={"inputs": "Hello world"}).json()[0]
    assert [t["text"] for t in tok] == ["[CLS]", "Hello", "world", "[SEP]"]
    info = client.get("/info").json()
    assert info["max_input_length"] == 256 and info["model_type"]["embedding"]["pooling"] == "mean"


def test_native_embed_all_outputs(client, minilm):
    body = {"inputs": TEXTS, "sparse": True, "multivector": True, "sparse_tokens": True,
            "kind": "query", "dimensions": 128}
    out = client.post("/v1/embed", json=body).json()
    local = minilm.embed(TEXTS, sparse=True, multivector=True, kind="query", dimensions=128)
    assert_same([r["dense"] for r in out["data"]], local.dense)
    assert out["data"][1]["sparse"]["indices"] == local.sparse[1].indices.tolist()
    assert "keywords" in out["data"][1]["sparse"]["tokens"]
    assert out["usage"]["tokens"] == local.usage.tokens
    assert client.post("/v1/tokenize", json={"inputs": "hi"}).json()["tokens"][0]["ids"] == [
        101, 7632, 102]


def test_operations(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    assert client.get("/docs").status_code == 200
    client.post("/v1/embed", json={"inputs": "metrics please"})
    text = client.get("/metrics").text
    for name in ("hybridembed_requests_total", "hybridembed_request_seconds_bucket",
                 "hybridembed_queue_texts", "hybridembed_batch_texts_bucket",
                 "hybridembed_batch_tokens_bucket", "hybridembed_tokens_per_second",
                 "hybridembed_cache_hits"):
        assert name in text
