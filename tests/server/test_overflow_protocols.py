"""Each overflow policy through each protocol (native, OpenAI, Ollama, TEI): the same
vectors as the Python API and the exact per-text token accounting, in the body where the
protocol has room and in ``x-hybridembed-*`` headers everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.test_overflow import words_text

ROUTES = {"native": "/v1/embed", "openai": "/v1/embeddings", "ollama": "/api/embed",
          "tei": "/embed"}
# (options, expected accounting of a 302-token text) per policy
POLICIES = {
    "truncate right": ({"overflow": "truncate"}, (256, 302, 46, 1)),
    "truncate left": ({"overflow": "truncate", "truncation_side": "left"}, (256, 302, 46, 1)),
    "chunk": ({"overflow": "chunk"}, (304, 302, 0, 2)),
    "chunk overlap max": ({"overflow": "chunk", "chunk_overlap": 16, "chunk_pooling": "max"},
                          (320, 302, 0, 2)),
}


def body(protocol: str, texts: list[str], options: dict) -> dict:
    options = dict(options)
    if protocol == "tei" and "truncation_side" in options:
        options["truncation_direction"] = options.pop("truncation_side").capitalize()
    if protocol == "native":
        return {"inputs": texts, **options}
    if protocol == "tei":
        return {"inputs": texts, **options}
    return {"model": "minilm", "input": texts, **options}


def vectors(protocol: str, answer) -> np.ndarray:
    return np.asarray({"native": lambda b: [d["dense"] for d in b["data"]],
                       "openai": lambda b: [d["embedding"] for d in b["data"]],
                       "ollama": lambda b: b["embeddings"], "tei": lambda b: b}[protocol](answer))


def accounting(protocol: str, r) -> dict[str, list[int]]:
    """The accounting in the body (where there is room), checked against the headers."""
    headers = {name: [int(v) for v in r.headers["x-hybridembed-" + name.replace("_", "-")]
                      .split(",")]
               for name in ("tokens", "input_tokens", "dropped_tokens", "chunks")}
    answer = r.json()
    if protocol == "native":
        rows = answer["data"]
        in_body = {k: [row[k] for row in rows] for k in headers}
        assert {k: answer["usage"][k] for k in headers} == in_body
    elif protocol == "openai":
        in_body = {k: answer["usage"][k] for k in headers}
        assert answer["usage"]["prompt_tokens"] == sum(in_body["tokens"])
    elif protocol == "ollama":
        in_body = answer["usage"]
        assert answer["prompt_eval_count"] == sum(in_body["tokens"])
    else:
        in_body = headers  # TEI answers bare lists: the headers are the only room
    assert in_body == headers
    assert int(r.headers["x-hybridembed-total-tokens"]) == sum(headers["tokens"])
    assert int(r.headers["x-hybridembed-cut-inputs"]) == sum(
        1 for d, c in zip(headers["dropped_tokens"], headers["chunks"], strict=True)
        if d or c > 1)
    return headers


@pytest.mark.parametrize("protocol", list(ROUTES))
@pytest.mark.parametrize("policy", list(POLICIES))
def test_policy_through_protocol(minilm, client, protocol, policy):
    options, (tokens, full, dropped, chunks) = POLICIES[policy]
    texts = [" ".join(words_text(minilm, 300, offset=1)), "a short text"]
    r = client.post(ROUTES[protocol], json=body(protocol, texts, options))
    assert r.status_code == 200, r.text
    assert accounting(protocol, r) == {"tokens": [tokens, 5], "input_tokens": [full, 5],
                                       "dropped_tokens": [dropped, 0], "chunks": [chunks, 1]}
    expected = minilm.embed(texts, **options).dense
    np.testing.assert_allclose(vectors(protocol, r.json()), expected, atol=1e-5)


@pytest.mark.parametrize("protocol", list(ROUTES))
def test_error_policy_through_protocol(minilm, client, protocol):
    texts = [" ".join(words_text(minilm, 300, offset=2))]
    r = client.post(ROUTES[protocol], json=body(protocol, texts, {"overflow": "error"}))
    assert r.status_code == (413 if protocol == "tei" else 400), r.text
    assert "302 tokens" in r.text


def test_left_truncation_keeps_the_last_tokens_on_every_protocol(minilm, client):
    words = words_text(minilm, 400, offset=5)
    tail = minilm.embed([" ".join(words[-254:])]).dense[0]
    for protocol in ROUTES:
        r = client.post(ROUTES[protocol], json=body(protocol, [" ".join(words)],
                                                    {"truncation_side": "left"}))
        assert r.status_code == 200, (protocol, r.text)
        np.testing.assert_allclose(vectors(protocol, r.json())[0], tail, atol=1e-5)


@pytest.fixture(scope="module")
def large_client(minilm):
    import httpx

    from tests.server.conftest import running_server

    with running_server(minilm, max_inputs=5000) as url, \
            httpx.Client(base_url=url, timeout=120) as c:
        yield c


@pytest.mark.parametrize("protocol", list(ROUTES))
def test_a_large_request_gets_totals_not_per_text_headers(minilm, large_client, protocol):
    """Per-text lists in headers would outgrow what HTTP clients accept (h11, under
    httpx, reads at most 16 KiB of headers): a request of thousands of texts gets the
    totals, and still says how many texts were cut."""
    long = " ".join(words_text(minilm, 300, offset=3))
    texts = [f"text number {i}" for i in range(3000)] + [long]
    r = large_client.post(ROUTES[protocol], json=body(protocol, texts, {}))
    assert r.status_code == 200, r.text[:300]
    assert "x-hybridembed-tokens" not in r.headers
    assert r.headers["x-hybridembed-cut-inputs"] == "1"
    assert r.headers["x-hybridembed-total-dropped-tokens"] == "46"
    assert int(r.headers["x-hybridembed-total-input-tokens"]) == int(
        r.headers["x-hybridembed-total-tokens"]) + 46
