"""The clients RAG teams use, unchanged, pointed at a server by base URL only
(langchain-openai with its defaults, langchain-ollama with a whole corpus,
huggingface_hub's InferenceClient for TEI), plus whole-corpus requests on every embedding
route, token-id policies, CORS, 405 and unknown routes. Vectors must equal in-process
ones (cosine >= 0.9999)."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest

from hybridembed.server import core as server_core
from hybridembed.server.token_ids import cl100k, cl100k_file
from tests.models import corpus
from tests.server.conftest import running_server

TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def assert_same(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    cos = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert np.all(cos >= 0.9999), cos.min()


@pytest.fixture(scope="module")
def fresh():
    """A second MiniLM with no result cache: the server's answers cannot come from the
    cache that computed the expected vectors."""
    from hybridembed import Embedder

    return Embedder("minilm", device="cpu", cache_size=0)


@pytest.fixture(scope="module")
def url(fresh):
    with running_server(fresh, cors_allow_origin="https://app.example") as u:
        yield u


@pytest.fixture
def tiktoken_cache(tmp_path, monkeypatch):
    """tiktoken's own cache, filled from the package dependency (as a user offline would):
    the file is stored under the SHA-1 of its URL, which is where tiktoken looks."""
    (tmp_path / hashlib.sha1(TIKTOKEN_URL.encode()).hexdigest()).write_bytes(cl100k_file())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


def test_langchain_openai_with_its_defaults(url, minilm, tiktoken_cache):
    from langchain_openai import OpenAIEmbeddings

    texts = corpus(20, seed=3) + ["naïve café — “quotes”, emoji 🙂 and 数字"]
    client = OpenAIEmbeddings(model="minilm", base_url=url + "/v1", api_key="unused")
    assert client.check_embedding_ctx_length  # the default: it sends cl100k token ids
    assert_same(client.embed_documents(texts), minilm.embed(texts).dense)
    assert_same(client.embed_query(texts[0]), minilm.embed([texts[0]]).dense[0])


def test_langchain_ollama_whole_corpus(url, minilm):
    from langchain_ollama import OllamaEmbeddings

    texts = corpus(5_000, seed=4)
    vectors = OllamaEmbeddings(model="minilm", base_url=url).embed_documents(texts)
    assert len(vectors) == 5_000
    assert_same(vectors, minilm.embed(texts).dense)


def test_huggingface_hub_inference_client(url, minilm, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    # HF_HUB_OFFLINE blocks every request the hub library makes, even to a local base_url;
    # this one goes to 127.0.0.1 only.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    client = InferenceClient(base_url=url)
    out = client.feature_extraction("Hybrid search keeps dense and sparse vectors together.")
    assert_same(np.asarray(out).reshape(1, -1),
                minilm.embed(["Hybrid search keeps dense and sparse vectors together."]).dense)


def test_tei_root_routes(url, minilm):
    expected = minilm.embed(["root"]).dense
    for path in ("/", "/invocations"):
        r = httpx.post(url + path, json={"inputs": "root"})
        assert r.status_code == 200, r.text
        assert_same(r.json(), expected)
    assert httpx.get(url + "/ping").status_code == 200
    assert "Ollama is running" in httpx.get(url + "/").text  # Ollama's GET / unchanged
    bad = httpx.post(url + "/", json={"inputs": []})
    assert bad.status_code == 400 and bad.json()["error_type"] == "Empty"


@pytest.mark.parametrize("route", ["/api/embed", "/v1/embeddings", "/embed", "/v1/embed"])
def test_whole_corpus_request_is_split_and_answered_in_order(fresh, minilm, monkeypatch, route):
    """More texts than the queue admits at once: the request is split into parts that
    wait for room (no 429), and every vector comes back in order. (The full 20,000-text
    size is measured in docs/BENCHMARKS.md.)"""
    monkeypatch.setattr(server_core, "PART_TEXTS", 100)
    texts = corpus(1_200, seed=5)
    body = {"/api/embed": {"model": "minilm", "input": texts},
            "/v1/embeddings": {"model": "minilm", "input": texts, "encoding_format": "float"},
            "/embed": {"inputs": texts}, "/v1/embed": {"inputs": texts}}[route]
    with running_server(fresh, max_queued_requests=250) as u:
        r = httpx.post(u + route, json=body, timeout=300)
    assert r.status_code == 200, r.text[:300]
    got = {"/api/embed": lambda b: b["embeddings"],
           "/v1/embeddings": lambda b: [d["embedding"] for d in b["data"]],
           "/embed": lambda b: b,
           "/v1/embed": lambda b: [d["dense"] for d in b["data"]]}[route](r.json())
    assert len(got) == 1_200
    assert_same(got, minilm.embed(texts).dense)


def test_an_error_in_a_later_part_names_the_whole_requests_index(fresh, monkeypatch):
    monkeypatch.setattr(server_core, "PART_TEXTS", 10)
    texts = ["short"] * 25
    texts[23] = "a " * 300
    with running_server(fresh) as u:
        r = httpx.post(u + "/v1/embed", json={"inputs": texts, "truncate": False}, timeout=60)
    assert r.status_code == 400 and "#23" in r.json()["error"]["message"]


def test_openai_input_cap_is_openais_and_configurable(fresh):
    with running_server(fresh) as u:
        r = httpx.post(u + "/v1/embeddings", json={"model": "minilm", "input": ["x"] * 2049})
        assert r.status_code == 400 and "2048" in r.json()["error"]["message"]
    with running_server(fresh, max_inputs=10) as u:
        r = httpx.post(u + "/api/embed", json={"model": "minilm", "input": ["x"] * 11})
        assert r.status_code == 413


def test_token_id_policies(fresh, minilm, url):
    text = "The quick brown fox jumps over the lazy dog"
    expected = minilm.embed([text]).dense
    # default: cl100k_base ids, decoded exactly
    r = httpx.post(url + "/v1/embeddings", json={"model": "minilm", "input": cl100k().encode(text),
                                                 "encoding_format": "float"})
    assert_same([r.json()["data"][0]["embedding"]], expected)
    assert r.json()["usage"]["prompt_tokens"] == minilm.embed([text]).usage.total_tokens
    # the model's own ids, fed as sent: [UNK] (100 in MiniLM) stays
    own = minilm.tokenize([text])[0][1:-1]
    with running_server(fresh, token_ids="model") as u:
        r = httpx.post(u + "/v1/embeddings", json={"model": "minilm", "input": [own],
                                                   "encoding_format": "float"})
        assert_same([r.json()["data"][0]["embedding"]], expected)
        with_unk = [own[0], 100, *own[1:]]
        r = httpx.post(u + "/v1/embeddings", json={"model": "minilm", "input": [with_unk],
                                                   "encoding_format": "float"})
        assert r.json()["usage"]["prompt_tokens"] == len(own) + 3  # [CLS] [UNK] ... [SEP]
        assert_same([r.json()["data"][0]["embedding"]], minilm.embed([with_unk]).dense)
        r = httpx.post(u + "/v1/embeddings", json={"model": "minilm", "input": [[99_999]]})
        assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
    with running_server(fresh, token_ids="refuse") as u:
        r = httpx.post(u + "/v1/embeddings", json={"model": "minilm", "input": [1, 2, 3]})
        assert r.status_code == 400
        assert "check_embedding_ctx_length=False" in r.json()["error"]["message"]
    # ids past the ordinary cl100k_base range are refused, never read as something else
    r = httpx.post(url + "/v1/embeddings", json={"model": "minilm", "input": [[100_257]]})
    assert r.status_code == 400 and "cl100k_base" in r.json()["error"]["message"]


def test_cors_405_and_unknown_routes(url):
    pre = httpx.options(url + "/v1/embeddings", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.post(url + "/v1/embeddings", json={"model": "minilm", "input": "x"},
                   headers={"Origin": "https://app.example"})
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(url + "/v1/embeddings", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    wrong = httpx.get(url + "/v1/embeddings")
    assert wrong.status_code == 405 and "POST" in wrong.headers["allow"]
    missing = httpx.post(url + "/v1/nothing", json={})
    assert missing.status_code == 404 and missing.json()["error"]["code"] is None
    assert missing.json()["error"]["param"] == "route"
    model = httpx.post(url + "/v1/embeddings", json={"model": "gpt-4", "input": "x"})
    assert model.json()["error"]["code"] == "model_not_found"


def test_cors_is_off_by_default(server_url):
    pre = httpx.options(server_url + "/v1/embeddings", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
