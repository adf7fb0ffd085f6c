"""The rerank service: parity with sentence-transformers' CrossEncoder on tiny random
cross-encoders (BERT and XLM-RoBERTa), MaxSim and BGE-M3 combined equal to
hybridembed.scores, request validation, merged scoring, and the rerank batcher."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from hybridembed.errors import (
    InputTooLongError,
    InvalidInputError,
    InvalidOptionError,
    UnsupportedModelError,
)
from hybridembed.rerank import CrossEncoderReranker
from hybridembed.scores import combined, cosine, lexical, maxsim
from hybridembed.service.rerank import (
    CrossEncoderRerankService,
    EmbeddingRerankService,
    relevance_scores,
    rerank_service,
)
from hybridembed.service.rerank_batcher import RerankBatcher
from tests.models import build_tiny_bert_cross_encoder, build_tiny_cross_encoder, corpus

QUERY = "hybrid search with sparse vectors"
DOCS = corpus(23, seed=5) + ["", "dog", " ".join(corpus(30, seed=9))]  # the last: truncated


@pytest.fixture(scope="module", params=["bert", "xlm-roberta"])
def ce_folder(request, tmp_path_factory):
    build = build_tiny_bert_cross_encoder if request.param == "bert" else build_tiny_cross_encoder
    return build(tmp_path_factory.mktemp(f"tiny-ce-{request.param}"), seed=3)


@pytest.fixture(scope="module")
def service(ce_folder):
    return CrossEncoderRerankService(CrossEncoderReranker(str(ce_folder), device="cpu",
                                                          batch_size=8))


def test_scores_equal_sentence_transformers_cross_encoder(service, ce_folder):
    from sentence_transformers import CrossEncoder

    st = CrossEncoder(str(ce_folder), device="cpu", max_length=service.max_length,
                      local_files_only=True)
    pairs = [(QUERY, d) for d in DOCS]
    raw_want = st.predict(pairs, activation_fn=torch.nn.Identity(), batch_size=8)
    sigmoid_want = st.predict(pairs, batch_size=8)  # the model's default activation
    result = service.run(service.request(QUERY, DOCS))
    assert result.method == "cross-encoder" and result.scores.dtype == np.float32
    np.testing.assert_allclose(result.scores, raw_want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(relevance_scores(result), sigmoid_want, rtol=1e-4, atol=1e-6)
    assert np.ptp(raw_want) > 1e-2  # the tiny model tells documents apart
    ranked = service.rerank(QUERY, DOCS)
    st_ranked = st.rank(QUERY, DOCS, batch_size=8)
    assert [i for i, _ in ranked] == [r["corpus_id"] for r in st_ranked]
    # usage: the tokens each pair took, query included, cut to the limit
    assert result.usage.tokens == [min(n, service.max_length) for n in
                                   service.reranker.pair_lengths([QUERY] * len(DOCS), DOCS)]


def test_merged_requests_score_as_alone(service):
    requests = [service.request(QUERY, DOCS[:5]), service.request("a dog by the river",
                                                                  DOCS[3:9]),
                service.request(QUERY, DOCS[10:11])]
    merged = service.run_many(requests)
    for request, got in zip(requests, merged, strict=True):
        np.testing.assert_allclose(got.scores, service.run(request).scores, rtol=1e-5,
                                   atol=1e-5)
        assert len(got.usage.tokens) == len(request)


def test_one_bad_request_never_fails_the_others(service):
    long_query = "river " * 400
    good = service.request(QUERY, DOCS[:3], truncate=False)
    bad = service.request(long_query, DOCS[:3], truncate=False)
    out = service.run_many([good, bad, good])
    assert isinstance(out[1], InputTooLongError) and out[1].field == "query"
    for i in (0, 2):
        np.testing.assert_allclose(out[i].scores, service.run(good).scores, atol=1e-5)


def test_truncation_off_names_the_query_or_the_documents(service):
    with pytest.raises(InputTooLongError) as info:
        service.count_tokens(service.request("river " * 400, ["a"], truncate=False))
    assert info.value.field == "query" and "the query has" in str(info.value)
    with pytest.raises(InputTooLongError) as info:
        service.run(service.request(QUERY, ["a", DOCS[-1]], truncate=False))
    assert info.value.field == "documents" and list(info.value.too_long) == [1]
    # with truncation on, the same inputs are cut and scored
    assert len(service.run(service.request("river " * 400, ["a", DOCS[-1]])).scores) == 2


@pytest.mark.parametrize("query, documents, options, error, field", [
    (None, ["a"], {}, InvalidInputError, "query"),
    ("a\ud800", ["a"], {}, InvalidInputError, "query"),
    ("q", ["a", 3], {}, InvalidInputError, "documents"),
    ("q", "one string", {}, InvalidInputError, "documents"),
    ("q", ["a"], {"truncate": 1}, InvalidOptionError, "truncate"),
    ("q", ["a"], {"weights": [1, 1, 1]}, InvalidOptionError, "weights"),
])
def test_request_validation(service, query, documents, options, error, field):
    with pytest.raises(error) as info:
        service.request(query, documents, **options)
    assert (getattr(info.value, "field", None) or info.value.option) == field


def test_token_budget_packs_batches(ce_folder):
    budget = CrossEncoderReranker(str(ce_folder), device="cpu", batch_size=64,
                                  max_batch_tokens=200)
    plain = CrossEncoderReranker(str(ce_folder), device="cpu", batch_size=64)
    calls = []
    forward = budget.model.forward

    def counting(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    budget.model.forward = counting
    np.testing.assert_allclose(budget.score(QUERY, DOCS), plain.score(QUERY, DOCS), atol=1e-5)
    assert len(calls) > 1 and all(n * t <= 200 or n == 1 for n, t in calls)


# -- embedding models -------------------------------------------------------------------------

def test_maxsim_and_combined_equal_hybridembed_scores(tiny_m3):
    docs = corpus(9, seed=2)
    q = tiny_m3.embed([QUERY], kind="query", dense=True, sparse=True, multivector=True)
    d = tiny_m3.embed(docs, dense=True, sparse=True, multivector=True)
    service = rerank_service(tiny_m3)
    assert isinstance(service, EmbeddingRerankService) and service.method == "combined"
    got = service.run(service.request(QUERY, docs)).scores
    want = [combined(cosine(q.dense[0], d.dense[i]), lexical(q.sparse[0], d.sparse[i]),
                     maxsim(q.multivector[0], d.multivector[i])) for i in range(len(docs))]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    weighted = service.run(service.request(QUERY, docs, weights=[1, 0, 0])).scores
    np.testing.assert_allclose(weighted, [cosine(q.dense[0], d.dense[i])
                                          for i in range(len(docs))], rtol=1e-5, atol=1e-6)
    maxsim_only = EmbeddingRerankService(tiny_m3, "maxsim")
    got = maxsim_only.run(maxsim_only.request(QUERY, docs))
    np.testing.assert_allclose(got.scores, [maxsim(q.multivector[0], d.multivector[i])
                                            for i in range(len(docs))], rtol=1e-5, atol=1e-6)
    assert got.usage.tokens == [q.usage.tokens[0] + t for t in d.usage.tokens]
    np.testing.assert_array_equal(relevance_scores(got), got.scores)  # no sigmoid


def test_an_embedder_without_colbert_head_cannot_rerank(minilm):
    with pytest.raises(UnsupportedModelError, match="cannot rerank"):
        rerank_service(minilm)


# -- the rerank batcher -----------------------------------------------------------------------

def test_batcher_merges_requests_and_answers_each(service):
    records = []

    async def main():
        batcher = RerankBatcher(service, max_batch_tokens=100_000, on_batch=records.append,
                                settle_ms=20)
        await batcher.start()
        requests = [service.request(f"{QUERY} {i}", DOCS[i:i + 4]) for i in range(6)]
        requests.append(service.request("river " * 400, DOCS[:2], truncate=False))
        try:
            return requests, await asyncio.gather(
                *(batcher.submit(r, 10) for r in requests), return_exceptions=True)
        finally:
            await batcher.stop()

    requests, results = asyncio.run(main())
    for request, result in zip(requests[:-1], results[:-1], strict=True):
        np.testing.assert_allclose(result.scores, service.run(request).scores, atol=1e-5)
    assert isinstance(results[-1], InputTooLongError)
    assert sum(r.requests for r in records) == 7 and max(r.requests for r in records) > 1
