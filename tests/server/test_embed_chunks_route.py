"""``POST /v1/embed_chunks``: the Python API's late chunking over HTTP, same numbers, and
bad chunking refused in the native error shape."""

from __future__ import annotations

import numpy as np
import pytest

DOCUMENT = ("The river floods every spring. It rises past the old wall.\n\n"
            "The city built a second wall in 1910. It held until the great flood.")


def test_same_chunks_and_vectors_as_the_python_api(minilm, client):
    r = client.post("/v1/embed_chunks", json={"document": DOCUMENT, "every": 9, "overlap": 2,
                                              "sparse": True, "multivector": True,
                                              "sparse_tokens": True})
    assert r.status_code == 200, r.text
    body = r.json()
    want = minilm.embed_chunks(DOCUMENT, every=9, overlap=2, sparse=True, multivector=True)
    assert [(d["start"], d["end"], d["text"], d["tokens"]) for d in body["data"]] == \
        [(c.start, c.end, c.text, c.tokens) for c in want.chunks]
    np.testing.assert_allclose([d["dense"] for d in body["data"]], want.result.dense, atol=1e-6)
    for d, item in zip(body["data"], want.result, strict=True):
        assert d["sparse"]["indices"] == item.sparse.indices.tolist()
        assert d["sparse"]["tokens"]
        np.testing.assert_allclose(d["multivector"], item.multivector, atol=1e-6)
    assert body["usage"] == {"document_tokens": want.document_tokens, "windows": 1,
                             "total_tokens": want.tokens}


def test_spans_and_chunks(minilm, client):
    cut = DOCUMENT.index("\n\n") + 2
    by_chunks = client.post("/v1/embed_chunks", json={
        "document": DOCUMENT, "chunks": [DOCUMENT[:cut], DOCUMENT[cut:]]}).json()
    by_spans = client.post("/v1/embed_chunks", json={
        "document": DOCUMENT, "spans": [[0, cut], [cut, len(DOCUMENT)]]}).json()
    np.testing.assert_allclose([d["dense"] for d in by_chunks["data"]],
                               [d["dense"] for d in by_spans["data"]], atol=1e-6)


@pytest.mark.parametrize("extra, named", [
    ({"spans": [[0, 9999]]}, "spans[0]"),
    ({"chunks": ["The river"]}, "concatenate"),
    ({}, "exactly one"),
    ({"every": True}, "every"),
    ({"every": 4, "overlap": 4}, "overlap"),
    ({"every": 4, "window_overlap": 1000}, "window_overlap"),
    ({"every": 4, "truncate": False}, "truncate"),
])
def test_bad_chunking_is_400(client, extra, named):
    r = client.post("/v1/embed_chunks", json={"document": DOCUMENT, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert named in error["message"] + str(error["param"]), error
