"""Every route that serves sparse or per-token vectors works with every model family: the
native ``/v1/embed``, TEI's ``/embed_sparse`` and ``/embed_all``, and ``/v1/models``
naming the family."""

import httpx
import numpy as np
import pytest

from hybridembed import Embedder
from tests.server.conftest import running_server


@pytest.mark.parametrize("name", ["splade", "inference-free-splade", "colbert"])
def test_sparse_and_multivector_routes_serve_each_family(family_dir, name):
    embedder = Embedder(str(family_dir(name)), device="cpu", cache_size=0)
    texts = ["Hybrid search, with learned sparse vectors.", "ColBERT scores every token"]
    with running_server(embedder) as url, httpx.Client(base_url=url, timeout=60) as client:
        native = client.post("/v1/embed", json={"inputs": texts, "sparse": True,
                                                 "multivector": True, "kind": "query"})
        assert native.status_code == 200, native.text
        direct = embedder.embed(texts, sparse=True, multivector=True, kind="query")
        for row, want in zip(native.json()["data"], direct, strict=True):
            assert row["sparse"]["indices"] == want.sparse.indices.tolist()
            np.testing.assert_allclose(row["multivector"], want.multivector, rtol=1e-6)
            np.testing.assert_allclose(row["dense"], want.dense, rtol=1e-6)
        sparse = client.post("/embed_sparse", json={"inputs": texts, "prompt_name": "query"})
        assert sparse.status_code == 200, sparse.text
        assert [[e["index"] for e in row] for row in sparse.json()] == \
            [v.sparse.indices.tolist() for v in direct]
        every = client.post("/embed_all", json={"inputs": texts})
        assert every.status_code == 200, every.text
        documents = embedder.embed(texts, dense=False, multivector=True)
        assert [len(m) for m in every.json()] == [len(m) for m in documents.multivector]
        assert client.get("/v1/models").json()["data"][0]["family"] == name


def test_admission_counts_the_prompt_a_model_puts_before_a_query(family_dir):
    """A model with a query prompt (the Qwen3 family's instruction) reads prompt + text;
    admission counts those tokens, not the bare text's: a query over the token limit is
    refused though its text alone fits, the same text as a document (no prompt) is not,
    and the query's answer equals in process."""
    emb = Embedder(str(family_dir("qwen3")), device="cpu", cache_size=0)
    text = "which river flows through Basel"
    prompt = emb.spec.prompts["query"]
    bare, prompted = emb.tokenizer.lengths([text, prompt + text])
    assert prompted > bare + 4
    with running_server(emb, max_queued_tokens=bare + 2) as url:
        query = httpx.post(url + "/v1/embed", json={"inputs": text, "kind": "query"})
        document = httpx.post(url + "/v1/embed", json={"inputs": text})
    with running_server(emb) as url:
        allowed = httpx.post(url + "/v1/embed", json={"inputs": text, "kind": "query"})
    assert query.status_code == 429 and "tokens" in query.json()["error"]["message"]
    assert document.status_code == 200 and allowed.status_code == 200
    np.testing.assert_allclose(allowed.json()["data"][0]["dense"],
                               emb.embed([text], kind="query").dense[0], atol=1e-5)
