"""Rerank and score routes over real HTTP, in each peer's documented shape, with the
official cohere SDK; HTTP answers equal the library's; several models in one server
(listings, routing, lazy loading, the memory budget, keep_alive, OOM fallback)."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import torch

from hybridembed.rerank import CrossEncoderReranker
from hybridembed.scores import combined, cosine, lexical, maxsim
from tests.models import build_tiny_cross_encoder, corpus
from tests.server.conftest import running_server

QUERY = "hybrid search with sparse vectors"
DOCS = corpus(12, seed=4) + ["dog", ""]


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


@pytest.fixture(scope="module")
def ce_dir(tiny_ce_dir):
    return tiny_ce_dir


@pytest.fixture(scope="module")
def ce(tiny_ce):
    return tiny_ce


@pytest.fixture(scope="module")
def url(minilm, ce, tiny_m3):
    with running_server(minilm, preloaded={"rr": ce, "m3": tiny_m3}) as u:
        yield u


@pytest.fixture
def http(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def test_cohere_v1_and_v2_shapes_equal_the_library(http, ce):
    want = ce.rerank(QUERY, DOCS)  # what collection search's cross-encoder rerank gives
    for version in ("v1", "v2"):
        r = http.post(f"/{version}/rerank", json={"model": "rr", "query": QUERY,
                                                  "documents": DOCS, "top_n": 5,
                                                  "return_documents": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["index"] for x in body["results"]] == [i for i, _ in want[:5]]
        np.testing.assert_allclose([x["relevance_score"] for x in body["results"]],
                                   sigmoid([s for _, s in want[:5]]), rtol=1e-5)
        assert [x["document"]["text"] for x in body["results"]] == [DOCS[i] for i, _ in want[:5]]
        tokens = sum(min(n, ce.max_length) for n in ce.pair_lengths([QUERY] * len(DOCS), DOCS))
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        assert body["meta"]["billed_units"]["search_units"] == 1
        assert body["meta"]["api_version"]["version"] == version[1]
        assert body["model"] == "rr" and body["id"]
    # Jina / Cohere v1 document objects; top_n above the count returns every document
    r = http.post("/v1/rerank", json={"model": "rr", "query": QUERY, "top_n": 50,
                                      "documents": [{"text": d} for d in DOCS[:3]]})
    assert [x["index"] for x in r.json()["results"]] == [
        i for i, _ in ce.rerank(QUERY, DOCS[:3])]
    assert "document" not in r.json()["results"][0]


def test_cohere_sdk(url, ce):
    import cohere

    want = ce.rerank(QUERY, DOCS)
    v2 = cohere.ClientV2(api_key="unused", base_url=url)
    out = v2.rerank(model="rr", query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in out.results] == [i for i, _ in want[:3]]
    np.testing.assert_allclose([r.relevance_score for r in out.results],
                               sigmoid([s for _, s in want[:3]]), rtol=1e-5)
    v1 = cohere.Client(api_key="unused", base_url=url)
    out = v1.rerank(model="rr", query=QUERY, documents=DOCS[:4], return_documents=True)
    assert [r.document.text for r in out.results] == [DOCS[i] for i, _ in
                                                      ce.rerank(QUERY, DOCS[:4])]
    assert out.meta.billed_units.search_units == 1
    with pytest.raises(cohere.errors.BadRequestError) as info:
        v2.rerank(model="rr", query=QUERY, documents=[])
    assert "documents" in info.value.body["message"]
    with pytest.raises(cohere.errors.NotFoundError):
        v2.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)


def test_tei_rerank_raw_scores_and_text(http, ce):
    want = ce.rerank(QUERY, DOCS)
    r = http.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True,
                                   "return_text": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body] == [i for i, _ in want]
    np.testing.assert_allclose([x["score"] for x in body], [s for _, s in want], rtol=1e-5,
                               atol=1e-6)
    assert [x["text"] for x in body] == [DOCS[i] for i, _ in want]
    plain = http.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert set(plain[0]) == {"index", "score"}
    np.testing.assert_allclose([x["score"] for x in plain], sigmoid([s for _, s in want]),
                               rtol=1e-5)


def test_vllm_rerank_and_score(http, ce, minilm):
    want = ce.rerank(QUERY, DOCS)
    r = http.post("/rerank", json={"model": "rr", "query": QUERY, "documents": DOCS,
                                   "top_n": 0})  # vLLM: 0 means all
    assert [x["index"] for x in r.json()["results"]] == [i for i, _ in want]
    r = http.post("/score", json={"model": "rr", "text_1": QUERY, "text_2": DOCS[:4]})
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    np.testing.assert_allclose([d["score"] for d in body["data"]],
                               sigmoid(ce.score(QUERY, DOCS[:4])), rtol=1e-5)
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] > 0
    pairwise = http.post("/v1/score", json={"model": "rr", "text_1": ["a dog", QUERY],
                                            "text_2": [DOCS[0], DOCS[1]]}).json()
    np.testing.assert_allclose([d["score"] for d in pairwise["data"]],
                               sigmoid([ce.score("a dog", [DOCS[0]])[0],
                                        ce.score(QUERY, [DOCS[1]])[0]]), rtol=1e-5)
    # an embedding model that cannot rerank scores by cosine, as vLLM does
    cos = http.post("/score", json={"model": "minilm", "text_1": QUERY,
                                    "text_2": DOCS[:2]}).json()
    e = minilm.embed([QUERY, *DOCS[:2]]).dense
    np.testing.assert_allclose([d["score"] for d in cos["data"]],
                               [cosine(e[0], e[1]), cosine(e[0], e[2])], rtol=1e-5)


def test_ollama_rerank(http, ce):
    want = ce.rerank(QUERY, DOCS)
    r = http.post("/api/rerank", json={"model": "rr", "query": QUERY, "documents": DOCS,
                                       "top_n": 2})
    body = r.json()
    assert body["model"] == "rr" and body["prompt_eval_count"] > 0
    assert [(x["index"], x["document"]) for x in body["results"]] == [
        (i, DOCS[i]) for i, _ in want[:2]]


def test_bge_m3_reranks_by_combined_and_by_maxsim(http, tiny_m3):
    docs = DOCS[:6]
    q = tiny_m3.embed([QUERY], kind="query", sparse=True, multivector=True)
    d = tiny_m3.embed(docs, sparse=True, multivector=True)
    want = [combined(cosine(q.dense[0], d.dense[i]), lexical(q.sparse[0], d.sparse[i]),
                     maxsim(q.multivector[0], d.multivector[i])) for i in range(len(docs))]
    body = http.post("/v2/rerank", json={"model": "m3", "query": QUERY,
                                         "documents": docs}).json()
    got = {x["index"]: x["relevance_score"] for x in body["results"]}
    np.testing.assert_allclose([got[i] for i in range(len(docs))], want, rtol=1e-5, atol=1e-6)
    mv_only = http.post("/v2/rerank", json={"model": "m3", "query": QUERY, "documents": docs,
                                            "weights": [0, 0, 1]}).json()
    got = {x["index"]: x["relevance_score"] for x in mv_only["results"]}
    np.testing.assert_allclose([got[i] for i in range(len(docs))],
                               [maxsim(q.multivector[0], d.multivector[i])
                                for i in range(len(docs))], rtol=1e-5, atol=1e-6)


def test_similarity_and_decode(http, minilm):
    e = minilm.embed([QUERY, *DOCS[:3]]).dense
    r = http.post("/similarity", json={"inputs": {"source_sentence": QUERY,
                                                  "sentences": DOCS[:3]}})
    np.testing.assert_allclose(r.json(), [cosine(e[0], e[i]) for i in (1, 2, 3)], rtol=1e-5)
    ids = minilm.tokenize(["hybrid search", "dense vectors"])
    assert http.post("/decode", json={"ids": ids}).json() == ["hybrid search", "dense vectors"]
    assert http.post("/decode", json={"ids": ids[0], "skip_special_tokens": False}).json() == [
        "[CLS] hybrid search [SEP]"]


def test_listings_and_ready_show_every_model(http):
    ready = http.get("/ready").json()
    assert ready["status"] == "ready"
    assert {m["name"]: (m["task"], m["state"]) for m in ready["models"]} == {
        "minilm": ("embed", "loaded"), "rr": ("rerank", "loaded"), "m3": ("embed", "loaded")}
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert set(models) == {"minilm", "rr", "m3"} and models["m3"]["can_rerank"]
    assert all(m["memory_bytes"] > 0 for m in models.values())
    tags = {m["name"] for m in http.get("/api/tags").json()["models"]}
    assert tags == {"minilm:latest", "rr:latest", "m3:latest"}
    ps = http.get("/api/ps").json()["models"]
    assert all(m["size"] > 0 and m["size_vram"] == 0 for m in ps) and len(ps) == 3


def test_openai_and_ollama_clients_route_by_model(url, minilm, tiny_m3):
    import ollama
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    out = client.embeddings.create(model="m3", input=["a text"], encoding_format="float")
    np.testing.assert_allclose(out.data[0].embedding, tiny_m3.embed(["a text"]).dense[0],
                               atol=1e-5)
    out = client.embeddings.create(model="minilm", input=["a text"], encoding_format="float")
    np.testing.assert_allclose(out.data[0].embedding, minilm.embed(["a text"]).dense[0],
                               atol=1e-5)
    o = ollama.Client(host=url)
    assert len(o.embed(model="m3", input="x").embeddings[0]) == tiny_m3.dim
    assert len(o.embed(model="minilm", input="x").embeddings[0]) == minilm.dim
    with pytest.raises(openai.NotFoundError, match="cannot embed"):
        client.embeddings.create(model="rr", input="x")


# -- model lifecycle ----------------------------------------------------------------------------

def _wait_until(check, seconds=20.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_lazy_loading_memory_budget_and_keep_alive(minilm, ce_dir, tmp_path):
    other = build_tiny_cross_encoder(tmp_path / "other", seed=5)
    size = sum(p.stat().st_size for p in ce_dir.glob("*.safetensors"))
    models = f"a={ce_dir},b={other}"
    # room for minilm (pinned: the first model) and one tiny reranker, not two
    budget = int(minilm_bytes(minilm) + 1.5 * size)
    with running_server(minilm, models=models, lazy=True, max_memory=budget) as u, \
            httpx.Client(base_url=u, timeout=60) as http:
        def loaded():
            return {m["name"].removesuffix(":latest")
                    for m in http.get("/api/ps").json()["models"]}

        assert loaded() == {"minilm"}  # lazy: nothing else loaded yet
        assert {m["name"]: m["state"] for m in http.get("/ready").json()["models"]} == {
            "minilm": "loaded", "a": "lazy", "b": "lazy"}
        body = {"query": QUERY, "documents": DOCS[:3]}
        assert http.post("/v1/rerank", json={**body, "model": "a"}).status_code == 200
        assert loaded() == {"minilm", "a"}
        assert http.post("/v1/rerank", json={**body, "model": "b"}).status_code == 200
        assert loaded() == {"minilm", "b"}  # a was the least recently used: unloaded
        # Ollama's keep_alive: 0 unloads right after the request
        r = http.post("/api/rerank", json={**body, "model": "a", "keep_alive": 0})
        assert r.status_code == 200
        assert _wait_until(lambda: "a" not in loaded())
        r = http.post("/api/rerank", json={**body, "model": "a", "keep_alive": "5m"})
        ps = {m["name"]: m for m in http.get("/api/ps").json()["models"]}
        assert r.status_code == 200
        assert ps["a:latest"]["expires_at"] != "0001-01-01T00:00:00Z"
        bad = http.post("/api/rerank", json={**body, "model": "a", "keep_alive": "soon"})
        assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]


def minilm_bytes(minilm) -> int:
    from hybridembed.server.models import loaded_bytes

    return loaded_bytes(minilm)


def test_out_of_memory_falls_back_to_the_smaller_reranker_over_http(ce_dir, tmp_path, minilm):
    small = build_tiny_cross_encoder(tmp_path / "small", seed=9)
    big = CrossEncoderReranker(str(ce_dir), device="cpu", fallback=str(small))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    big.model.forward = out_of_memory
    want = CrossEncoderReranker(str(small), device="cpu").rerank(QUERY, DOCS[:4])
    with running_server(minilm, preloaded={"big": big}) as u:
        r = httpx.post(u + "/v1/rerank", json={"model": "big", "query": QUERY,
                                               "documents": DOCS[:4]}, timeout=60)
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()["results"]] == [i for i, _ in want]
    np.testing.assert_allclose([x["relevance_score"] for x in r.json()["results"]],
                               sigmoid([s for _, s in want]), rtol=1e-5)


def test_a_server_of_one_reranker(ce):
    """Like TEI started with a reranker: /info says so, /rerank needs no model, embedding
    routes answer 404 naming the missing kind of model."""
    with running_server(ce) as u, httpx.Client(base_url=u, timeout=60) as http:
        assert http.get("/ready").status_code == 200
        info = http.get("/info").json()
        assert "reranker" in info["model_type"] and info["max_input_length"] == ce.max_length
        r = http.post("/rerank", json={"query": QUERY, "texts": DOCS[:3]})
        assert [x["index"] for x in r.json()] == [i for i, _ in ce.rerank(QUERY, DOCS[:3])]
        r = http.post("/embed", json={"inputs": "x"})
        assert r.status_code == 404 and "no embedding model" in r.json()["error"]
