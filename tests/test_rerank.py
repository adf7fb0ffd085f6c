"""Rerankers: the cross-encoder against an independent unbatched reference, its batching,
out-of-memory halving and fallback, and the embedding-score rerankers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hybridembed.errors import (
    InvalidInputError,
    InvalidOptionError,
    ModelNotFoundError,
    OutOfMemoryError,
    UnsupportedModelError,
)
from hybridembed.rerank import CrossEncoderReranker, bge_m3_rerank, multivector_rerank
from tests.models import build_tiny_cross_encoder, corpus

QUERY = "hybrid search with sparse vectors"
LONG = " ".join(corpus(40, seed=3))  # far over the 128-token limit: truncated


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory):
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce"), seed=0)


@pytest.fixture(scope="module")
def ce_fallback_dir(tmp_path_factory):
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce-fallback"), seed=1)


@pytest.fixture(scope="module")
def reranker(ce_dir):
    return CrossEncoderReranker(str(ce_dir), device="cpu", batch_size=4)


@pytest.fixture
def fresh(ce_dir):
    """A reranker of its own, for tests that patch its model."""
    return CrossEncoderReranker(str(ce_dir), device="cpu", batch_size=8)


def texts_of_mixed_lengths() -> list[str]:
    short = corpus(12, seed=7)
    return [short[0], LONG, "", short[1], "dog", short[2] * 6, short[3], "the cat", short[4],
            LONG[:300], short[5], "river"]


def reference_scores(folder, query: str, texts: list[str]) -> np.ndarray:
    """Each pair alone, through transformers' own classes (eager attention, no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            # a list of one pair: called with two bare strings, transformers drops an empty
            # second text and encodes the query alone
            enc = tok([query], [text], truncation=True, max_length=128, return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return np.array(out, dtype=np.float32)


def oom_when_over(limit: int, kind: str = "torch"):
    calls: list[int] = []

    def install(reranker):
        original = reranker.model.forward

        def forward(*args, **kwargs):
            rows = kwargs["input_ids"].shape[0]
            calls.append(rows)
            if rows > limit:
                if kind == "torch":
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
                raise RuntimeError("CUDA error: out of memory")
            return original(*args, **kwargs)

        reranker.model.forward = forward
        return calls

    return install


# -- cross-encoder --------------------------------------------------------------------------

def test_scores_equal_unbatched_reference(reranker, ce_dir):
    texts = texts_of_mixed_lengths()
    got = reranker.score(QUERY, texts)
    assert got.dtype == np.float32 and got.shape == (len(texts),)
    want = reference_scores(ce_dir, QUERY, texts)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want) > 1e-2  # the tiny model does tell texts apart


def test_loads_with_sdpa_in_fp32_eval_mode(reranker):
    assert reranker.model.config._attn_implementation == "sdpa"
    assert reranker.model.dtype == torch.float32
    assert not reranker.model.training
    assert reranker.max_length == 128  # 130 positions - (pad id 1 + 1)


def test_original_order_is_restored(reranker):
    texts = texts_of_mixed_lengths()
    whole = reranker.score(QUERY, texts)
    alone = np.array([reranker.score(QUERY, [t])[0] for t in texts])
    np.testing.assert_allclose(whole, alone, rtol=1e-5, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = reranker.score(QUERY, [texts[i] for i in perm])
    np.testing.assert_allclose(shuffled, whole[perm], rtol=1e-5, atol=1e-5)


def test_rerank_orders_best_first(reranker):
    texts = texts_of_mixed_lengths()
    scores = reranker.score(QUERY, texts)
    ranked = reranker.rerank(QUERY, texts)
    assert [i for i, _ in ranked] == list(np.argsort(-scores, kind="stable"))
    assert [s for _, s in ranked] == sorted((float(s) for s in scores), reverse=True)
    np.testing.assert_allclose([s for _, s in ranked], scores[[i for i, _ in ranked]])
    assert reranker.rerank(QUERY, texts, top_k=3) == ranked[:3]
    assert reranker.rerank(QUERY, texts, top_k=0) == []
    assert reranker.rerank(QUERY, texts, top_k=100) == ranked


def test_rerank_ties_keep_input_order(reranker, monkeypatch):
    monkeypatch.setattr(reranker, "score",
                        lambda q, t: np.array([1.0, 2.0, 1.0, 2.0], dtype=np.float32))
    assert reranker.rerank(QUERY, ["a", "b", "c", "d"]) == [(1, 2.0), (3, 2.0), (0, 1.0),
                                                            (2, 1.0)]


@pytest.mark.parametrize("kind", ["torch", "runtime"])
def test_oom_halves_the_batch_and_gives_identical_scores(fresh, reranker, kind, caplog):
    texts = texts_of_mixed_lengths()
    want = reranker.score(QUERY, texts)
    calls = oom_when_over(2, kind)(fresh)
    with caplog.at_level(logging.WARNING, logger="hybridembed.rerank"):
        got = fresh.score(QUERY, texts)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert calls[:3] == [8, 4, 2]  # halved down to what fits, then kept for the call
    assert max(calls[2:]) <= 2 and sum(c for c in calls if c <= 2) == len(texts)
    assert "retrying with batches of 2" in caplog.text
    assert fresh.batch_size == 8  # the next call starts at full size again


def test_oom_alone_falls_back_to_the_second_model(fresh, ce_dir, ce_fallback_dir, caplog):
    texts = texts_of_mixed_lengths()
    oom_when_over(0)(fresh)
    fresh.fallback = str(ce_fallback_dir)
    with caplog.at_level(logging.WARNING, logger="hybridembed.rerank"):
        got = fresh.score(QUERY, texts)
    assert f"{ce_dir} ran out of memory; falling back to {ce_fallback_dir}" in caplog.text
    want = CrossEncoderReranker(str(ce_fallback_dir), device="cpu").score(QUERY, texts)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, reference_scores(ce_fallback_dir, QUERY, texts),
                               rtol=1e-5, atol=1e-5)
    assert fresh.name == str(ce_fallback_dir) and fresh.fallback is None
    assert fresh.rerank(QUERY, texts)[0][1] == pytest.approx(float(want.max()), abs=1e-5)


def test_fallback_set_at_construction(ce_dir, ce_fallback_dir):
    r = CrossEncoderReranker(str(ce_dir), device="cpu", fallback=str(ce_fallback_dir))
    assert r.fallback == str(ce_fallback_dir) and r.name == str(ce_dir)


def test_oom_alone_without_fallback_raises(fresh):
    texts = ["dog", LONG, "the cat"]
    oom_when_over(0)(fresh)
    with pytest.raises(OutOfMemoryError) as info:
        fresh.score(QUERY, texts)
    assert info.value.index == 1 and info.value.tokens == 128  # the longest goes first
    assert "cpu" in str(info.value)


def test_other_runtime_errors_propagate(fresh):
    def broken(*args, **kwargs):
        raise RuntimeError("something else went wrong")

    fresh.model.forward = broken
    with pytest.raises(RuntimeError, match="something else"):
        fresh.score(QUERY, ["dog"])


def test_empty_texts(reranker):
    got = reranker.score(QUERY, [])
    assert got.shape == (0,) and got.dtype == np.float32
    assert reranker.rerank(QUERY, []) == []


@pytest.mark.parametrize("query, texts, index", [
    (None, ["a"], None),
    (3, ["a"], None),
    (QUERY, ["a", "b", None], 2),
    (QUERY, ["a", 7], 1),
    (QUERY, [["nested"]], 0),
    (QUERY, "a single string", None),
])
def test_bad_inputs(reranker, query, texts, index):
    with pytest.raises(InvalidInputError) as info:
        reranker.score(query, texts)
    assert info.value.index == index
    if index is not None:
        assert f"#{index}" in str(info.value)
    with pytest.raises(InvalidInputError):
        reranker.rerank(query, texts)


@pytest.mark.parametrize("top_k", [-1, 1.5, "3", True])
def test_bad_top_k(reranker, top_k):
    with pytest.raises(InvalidOptionError):
        reranker.rerank(QUERY, ["a"], top_k=top_k)


def test_bad_options(ce_dir):
    with pytest.raises(InvalidOptionError):
        CrossEncoderReranker(str(ce_dir), device="cpu", batch_size=0)
    with pytest.raises(InvalidOptionError):
        CrossEncoderReranker(str(ce_dir), device="tpu")


def test_max_length_below_the_model_limit(ce_dir):
    r = CrossEncoderReranker(str(ce_dir), device="cpu", max_length=16)
    assert r.max_length == 16
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(ce_dir)(QUERY, LONG, truncation=True, max_length=16)
    assert len(enc["input_ids"]) == 16
    assert np.isfinite(r.score(QUERY, [LONG])).all()


def test_missing_model(tmp_path):
    with pytest.raises(ModelNotFoundError):
        CrossEncoderReranker("nobody/no-such-reranker", device="cpu")
    with pytest.raises(ModelNotFoundError):
        CrossEncoderReranker(str(tmp_path), device="cpu")  # a folder without config.json


def test_encoder_without_classification_head_is_refused(tiny_m3_dir):
    with pytest.raises(UnsupportedModelError, match="not a cross-encoder"):
        CrossEncoderReranker(str(tiny_m3_dir), device="cpu")


# -- rerankers over embedding scores --------------------------------------------------------

def test_multivector_rerank_by_hand():
    query = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    docs = [
        np.array([[1.0, 0.0]]),              # (1 + 0) / 2 = 0.5
        np.array([[1.0, 0.0], [0.0, 1.0]]),  # (1 + 1) / 2 = 1.0
        np.array([[0.5, 0.5], [-1.0, 2.0]]),  # (0.5 + 2) / 2 = 1.25
        np.zeros((0, 2)),                    # empty document: 0
        np.array([[0.5, 0.5]]),              # (0.5 + 0.5) / 2 = 0.5, ties with #0
    ]
    got = multivector_rerank(query, docs)
    assert [i for i, _ in got] == [2, 1, 0, 4, 3]
    np.testing.assert_allclose([s for _, s in got], [1.25, 1.0, 0.5, 0.5, 0.0])
    assert multivector_rerank(query, docs, top_k=2) == got[:2]
    assert multivector_rerank(query, []) == []


def test_multivector_rerank_rejects_mismatched_dims():
    with pytest.raises(InvalidInputError) as info:
        multivector_rerank(np.ones((2, 3)), [np.ones((1, 3)), np.ones((4, 2))])
    assert info.value.index == 1


def test_bge_m3_rerank_by_hand():
    dense = [0.8, 0.5, 0.1]
    sparse = [0.1, 0.4, 0.0]
    multi = [0.6, 0.9, 0.2]
    # 0.4*d + 0.2*s + 0.4*m: 0.58, 0.64, 0.12
    got = bge_m3_rerank(dense, sparse, multi)
    assert [i for i, _ in got] == [1, 0, 2]
    np.testing.assert_allclose([s for _, s in got], [0.64, 0.58, 0.12])
    assert bge_m3_rerank(dense, sparse, multi, top_k=1) == got[:1]
    # custom weights (1, 1, 2): (d + s + 2m) / 4 = 0.525, 0.675, 0.125
    got = bge_m3_rerank(dense, sparse, multi, weights=(1.0, 1.0, 2.0))
    np.testing.assert_allclose([s for _, s in got], [0.675, 0.525, 0.125])


def test_bge_m3_rerank_missing_kinds_and_ties():
    # sparse not computed: (0.4*d + 0.4*m) / 0.8
    got = bge_m3_rerank([1.0, 0.0, 1.0], None, [0.0, 1.0, 0.5])
    assert [i for i, _ in got] == [2, 0, 1]
    np.testing.assert_allclose([s for _, s in got], [0.75, 0.5, 0.5])
    assert bge_m3_rerank([0.5, 0.5], None, None) == [(0, 0.5), (1, 0.5)]
    assert bge_m3_rerank([], [], []) == []


def test_bge_m3_rerank_bad_arguments():
    with pytest.raises(InvalidOptionError):
        bge_m3_rerank([0.1, 0.2], [0.3], [0.4, 0.5])
    with pytest.raises(InvalidOptionError):
        bge_m3_rerank(None, None, None)
    with pytest.raises(InvalidOptionError):
        bge_m3_rerank([0.1], [0.2], [0.3], weights=(0.5, 0.5))
    with pytest.raises(InvalidOptionError):
        bge_m3_rerank([0.1], None, None, weights=(0.0, 1.0, 1.0))
    with pytest.raises(InvalidOptionError):
        bge_m3_rerank([0.1], [0.2], [0.3], top_k=-1)
