"""Collections over HTTP on a real server with the default embedded store."""

import httpx

from tests.server.conftest import running_server


def test_index_and_search_over_http(minilm, tmp_path):
    with running_server(minilm, data_dir=tmp_path) as url, httpx.Client(base_url=url,
                                                                         timeout=60) as c:
        assert c.get("/v1/collections").json() == {"store": "edge", "collections": []}
        r = c.post("/v1/collections", json={"name": "kb"})
        assert r.status_code == 201 and r.json()["schema"]["dense_dim"] == 384
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 409
        docs = [{"id": "cat", "text": "The cat sat on the mat.", "payload": {"lang": "en"}},
                {"id": "river", "text": "The Rhine flows to the North Sea.",
                 "payload": {"lang": "de"}}]
        assert c.post("/v1/collections/kb/documents", json={"documents": docs}).json()[
            "upserted"] == 2
        hits = c.post("/v1/collections/kb/search",
                      json={"query": "a cat on a mat", "rerank": "multivector", "k": 2}).json()
        assert hits["hits"][0]["id"] == "cat"
        assert set(hits["hits"][0]["retrievers"]) == {"dense", "sparse", "multivector"}
        only_de = c.post("/v1/collections/kb/search",
                         json={"query": "water", "filter": {"lang": "de"}}).json()["hits"]
        assert [h["id"] for h in only_de] == ["river"]
        assert c.get("/v1/collections/kb").json()["count"] == 2
        assert c.request("DELETE", "/v1/collections/kb/documents",
                         json={"ids": ["cat"]}).json() == {"deleted": 1}
        for path, body, status in [
            ("/v1/collections/nope/search", {"query": "x"}, 404),
            ("/v1/collections/kb/search", {"query": "x", "mode": "fuzzy"}, 400),
            ("/v1/collections/kb/search", {"query": "x", "filter": {"bad key": "a"}}, 400),
            ("/v1/collections", {"name": "../etc"}, 400),
            ("/v1/collections", {"name": "x'; DROP TABLE y; --"}, 400),
            ("/v1/collections/kb/documents", {"documents": [{"id": 1}]}, 400),
        ]:
            r = c.post(path, json=body)
            assert r.status_code == status, (path, r.text)
            assert r.json()["error"]["message"]
        assert c.delete("/v1/collections/kb").json() == {"dropped": "kb"}
        assert c.delete("/v1/collections/kb").status_code == 404
        metrics = c.get("/metrics").text
        assert 'route="/v1/collections/{name}/search"' in metrics


def test_a_bad_document_is_a_400_naming_it_and_nothing_is_written(minilm, tmp_path):
    """A NUL byte or an unpaired surrogate (legal JSON: "\\ud800") in any document: 400
    naming it, before anything is written — never a 500 with part of the batch stored."""
    with running_server(minilm, data_dir=tmp_path) as url, httpx.Client(base_url=url,
                                                                         timeout=60) as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        for bad in ('"a\\u0000b"', '"a\\ud800b"'):
            docs = ", ".join(f'{{"id": "d{i}", "text": "doc {i}"}}' for i in range(301))
            docs = docs.replace('"doc 280"', bad)
            r = c.post("/v1/collections/kb/documents", content='{"documents": [' + docs + "]}",
                       headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            message = r.json()["error"]["message"]  # the route's model or the store names it
            assert "document #280" in message or "documents.280.text" in message, message
        assert c.get("/v1/collections/kb").json()["count"] == 0
