"""The bad-input table of rerank and score: each row one input kind, spelled in each way in
— the Python service and every rerank protocol (Cohere v1/v2, vLLM ``/rerank`` and
``/score``, TEI ``/rerank``, Ollama ``/api/rerank``, and OpenAI embeddings for a reranker
asked to embed) — with its status, the protocol's error shape and the field named.
README's "Rerank and score" section documents the same answers."""

from __future__ import annotations

import json

import httpx
import pytest

from hybridembed.errors import InputTooLongError, InvalidInputError, InvalidOptionError
from hybridembed.service.rerank import rerank_service
from tests.server.conftest import running_server

LONG = "river " * 200  # far over the tiny cross-encoder's 128 tokens
SURROGATE = "a\ud800b"
OK = ["a dog", "the river"]

# name -> entry point -> (body, status, what the message names); python: (call, error, named)
CASES: dict[str, dict] = {
    "empty documents": {
        "python": (lambda s: s.rerank("q", []), None, 0),
        "cohere_v1": ({"model": "rr", "query": "q", "documents": []}, 400, "documents"),
        "cohere_v2": ({"model": "rr", "query": "q", "documents": []}, 400, "documents"),
        "vllm_rerank": ({"model": "rr", "query": "q", "documents": []}, 400, "documents"),
        "vllm_score": ({"model": "rr", "text_1": "q", "text_2": []}, 400, "text_2"),
        "tei": ({"query": "q", "texts": []}, 400, "texts"),
        "ollama": ({"model": "rr", "query": "q", "documents": []}, 400, "documents"),
    },
    "top_n below 1": {
        "python": (lambda s: s.rerank("q", OK, top_k=-1), InvalidOptionError, "top_k"),
        "cohere_v1": ({"model": "rr", "query": "q", "documents": OK, "top_n": 0}, 400,
                      "top_n"),
        "cohere_v2": ({"model": "rr", "query": "q", "documents": OK, "top_n": -2}, 400,
                      "top_n"),
        "vllm_rerank": ({"model": "rr", "query": "q", "documents": OK, "top_n": -1}, 400,
                        "top_n"),
        "ollama": ({"model": "rr", "query": "q", "documents": OK, "top_n": 0}, 400, "top_n"),
    },
    "top_n of the wrong JSON type": {
        "python": (lambda s: s.rerank("q", OK, top_k=True), InvalidOptionError, "top_k"),
        "cohere_v1": ({"model": "rr", "query": "q", "documents": OK, "top_n": "3"}, 400,
                      "top_n"),
        "cohere_v2": ({"model": "rr", "query": "q", "documents": OK, "top_n": True}, 400,
                      "top_n"),
        "vllm_rerank": ({"model": "rr", "query": "q", "documents": OK, "top_n": 1.5}, 400,
                        "top_n"),
        "ollama": ({"model": "rr", "query": "q", "documents": OK, "top_n": "all"}, 400,
                   "top_n"),
    },
    "an over-long query with truncation off": {
        "python": (lambda s: s.rerank(LONG, OK, truncate=False), InputTooLongError, "query"),
        "cohere_v1": ({"model": "rr", "query": LONG, "documents": OK, "truncate": False},
                      400, "query"),
        "cohere_v2": ({"model": "rr", "query": LONG, "documents": OK, "truncate": False},
                      400, "query"),
        "vllm_rerank": ({"model": "rr", "query": LONG, "documents": OK, "truncate": False},
                        400, "query"),
        "vllm_score": ({"model": "rr", "text_1": LONG, "text_2": OK}, 400, "query"),
        "tei": ({"query": LONG, "texts": OK, "truncate": False}, 413, "query"),
        "ollama": ({"model": "rr", "query": LONG, "documents": OK, "truncate": False}, 400,
                   "query"),
    },
    "an over-long pair with truncation off": {
        "python": (lambda s: s.rerank("q", ["a", LONG], truncate=False), InputTooLongError,
                   "#1"),
        "cohere_v2": ({"model": "rr", "query": "q", "documents": ["a", LONG],
                       "truncate": False}, 400, "#1"),
        "vllm_score": ({"model": "rr", "text_1": "q", "text_2": ["a", LONG]}, 400, "text_2"),
        "tei": ({"query": "q", "texts": ["a", LONG], "truncate": False}, 413, "texts: 1"),
        "ollama": ({"model": "rr", "query": "q", "documents": ["a", LONG], "truncate": False},
                   400, "#1"),
    },
    "an unknown model": {
        "cohere_v1": ({"model": "rerank-v3.5", "query": "q", "documents": OK}, 404,
                      "rerank-v3.5"),
        "cohere_v2": ({"model": "rerank-v3.5", "query": "q", "documents": OK}, 404,
                      "rerank-v3.5"),
        "vllm_rerank": ({"model": "nope", "query": "q", "documents": OK}, 404, "model"),
        "vllm_score": ({"model": "nope", "text_1": "q", "text_2": OK}, 404, "model"),
        "ollama": ({"model": "nope", "query": "q", "documents": OK}, 404, "nope"),
    },
    "a model of the wrong kind": {  # for this task the model is not served: 404
        "cohere_v1": ({"model": "minilm", "query": "q", "documents": OK}, 404,
                      "cannot rerank"),
        "cohere_v2": ({"model": "minilm", "query": "q", "documents": OK}, 404,
                      "cannot rerank"),
        "vllm_rerank": ({"model": "minilm", "query": "q", "documents": OK}, 404, "model"),
        "ollama": ({"model": "minilm", "query": "q", "documents": OK}, 404, "cannot rerank"),
        "openai": ({"model": "rr", "input": "x"}, 404, "cannot embed"),
    },
    "a document that is not a string": {
        "python": (lambda s: s.rerank("q", ["a", 3]), InvalidInputError, "#1"),
        "cohere_v1": ({"model": "rr", "query": "q", "documents": ["a", 3]}, 400, "documents"),
        "vllm_score": ({"model": "rr", "text_1": "q", "text_2": ["a", None]}, 400, "text_2"),
        "tei": ({"query": "q", "texts": ["a", 3]}, 422, "texts"),
        "ollama": ({"model": "rr", "query": "q", "documents": ["a", 3]}, 400, "documents"),
    },
    "an unpaired surrogate": {
        "python": (lambda s: s.rerank(SURROGATE, OK), InvalidInputError, "query"),
        "cohere_v2": ({"model": "rr", "query": SURROGATE, "documents": OK}, 400, "query"),
        "tei": ({"query": "q", "texts": ["a", SURROGATE]}, 422, "document #1"),
        "ollama": ({"model": "rr", "query": "q", "documents": [SURROGATE]}, 400,
                   "document #0"),
    },
    "a string as a boolean": {
        "cohere_v1": ({"model": "rr", "query": "q", "documents": OK,
                       "return_documents": "yes"}, 400, "return_documents"),
        "tei": ({"query": "q", "texts": OK, "raw_scores": "no"}, 422, "raw_scores"),
        "ollama": ({"model": "rr", "query": "q", "documents": OK, "truncate": 0}, 400,
                   "truncate"),
    },
}

ROUTES = {"cohere_v1": "/v1/rerank", "cohere_v2": "/v2/rerank", "vllm_rerank": "/rerank",
          "vllm_score": "/score", "tei": "/rerank", "ollama": "/api/rerank",
          "openai": "/v1/embeddings"}


def _message(entry: str, body) -> str:
    """The message of an error answer, after checking the protocol's error shape."""
    if entry.startswith("cohere"):
        assert set(body) == {"message"}, body
        return body["message"]
    if entry.startswith("vllm"):
        assert set(body) == {"object", "message", "type", "param", "code"}, body
        assert body["object"] == "error"
        return f"{body['message']} param={body['param']}"
    if entry == "ollama":
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        return body["error"]
    if entry == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        return f"{body['error']['message']} param={body['error']['param']}"
    assert set(body) == {"error", "error_type"}, body
    return body["error"]


@pytest.fixture(scope="module")
def url(minilm, tiny_ce):
    with running_server(minilm, preloaded={"rr": tiny_ce}) as u:
        yield u


@pytest.mark.parametrize("name, row", [pytest.param(n, c["python"], id=n)
                                       for n, c in CASES.items() if "python" in c])
def test_python_service(tiny_ce, name, row):
    call, error, named = row
    service = rerank_service(tiny_ce)
    if error is None:
        assert len(call(service)) == named
        return
    with pytest.raises(error) as info:
        call(service)
    assert named in str(info.value) or named in (getattr(info.value, "field", None) or
                                                 getattr(info.value, "option", None) or "")


@pytest.mark.parametrize("entry", list(ROUTES))
def test_http(url, entry):
    """Every row of the table for one protocol, against one real server."""
    rows = [(name, case[entry]) for name, case in CASES.items() if entry in case]
    assert rows
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, (body, status, named) in rows:
            r = client.post(ROUTES[entry], content=json.dumps(body).encode(),
                            headers={"content-type": "application/json"})
            assert r.status_code == status, (name, r.text[:300])
            message = _message(entry, r.json())
            assert named in message, (name, message)
