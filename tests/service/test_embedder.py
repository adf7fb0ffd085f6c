"""Behaviour of Embedder.embed through the public API: outputs, cache, bad input,
truncation, out-of-memory splitting and threads."""

import threading
import time

import numpy as np
import pytest

from hybridembed import (
    Embedder,
    InputTooLongError,
    InvalidInputError,
    InvalidOptionError,
    OutOfMemoryError,
)
from hybridembed.runtimes import RuntimeOutOfMemory


def test_outputs_and_usage(minilm):
    r = minilm.embed(["the cat sat on the mat", "dogs"], sparse=True, multivector=True)
    assert r.dense.shape == (2, 384) and r.dense.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(r.dense, axis=1), 1.0, atol=1e-5)
    assert r.usage.tokens == [8, 3] and r.usage.total_tokens == 11
    assert [m.shape for m in r.multivector] == [(7, 384), (2, 384)]
    np.testing.assert_allclose(np.linalg.norm(r.multivector[0], axis=1), 1.0, atol=1e-5)
    assert len(r) == 2 and r[1].tokens == 3


def test_bm25_sparse_matches_qdrant_edge(minilm):
    from qdrant_edge import Bm25

    text = "Running runners run quickly; the runner runs."
    bm25 = Bm25()
    for kind, fn in (("document", bm25.embed_document), ("query", bm25.embed_query)):
        ours = minilm.embed([text], dense=False, sparse=True, kind=kind).sparse[0]
        ref = fn(text)
        assert ours.to_dict() == pytest.approx(dict(zip(ref.indices, ref.values, strict=True)))
    tokens = minilm.sparse_tokens(ours, text)
    assert "quickly" in tokens and "the" not in tokens  # stopwords are dropped


def test_empty_list_and_empty_string(minilm):
    r = minilm.embed([], sparse=True, multivector=True)
    assert r.dense.shape == (0, 384) and r.sparse == [] and r.multivector == [] and len(r) == 0
    r = minilm.embed([""])
    assert r.dense.shape == (1, 384) and r.usage.tokens == [2]


def test_dimensions_truncate_and_renormalise(minilm):
    full = minilm.embed(["matryoshka"]).dense[0]
    short = minilm.embed(["matryoshka"], dimensions=64).dense[0]
    assert short.shape == (64,)
    np.testing.assert_allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)


def test_query_embedding(minilm):
    q = minilm.embed_query("what is hybrid search?", sparse=True)
    assert q.dense.shape == (384,) and np.all(q.sparse.values == 1.0)


@pytest.mark.parametrize("bad, index", [([None], 0), (["ok", 3], 1), (["ok", ["nested"]], 1),
                                        (["a", "b", b"bytes"], 2)])
def test_non_string_items_name_the_index(minilm, bad, index):
    with pytest.raises(InvalidInputError, match=f"#{index}") as err:
        minilm.embed(bad)
    assert err.value.index == index and isinstance(err.value, TypeError)


def test_non_list_input(minilm):
    with pytest.raises(TypeError, match="list of strings"):
        minilm.embed(42)


@pytest.mark.parametrize("options, valid", [
    ({"kind": "passage"}, "document, query"),
    ({"dimensions": 0}, "1 to 384"),
    ({"dimensions": 385}, "1 to 384"),
    ({"dense": False}, "at least one output"),
    ({"sparse": "yes"}, "true or false"),
])
def test_bad_options_list_what_is_valid(minilm, options, valid):
    with pytest.raises(InvalidOptionError, match=valid):
        minilm.embed(["x"], **options)


def test_unknown_device_and_model():
    with pytest.raises(InvalidOptionError, match="valid: auto, cpu, cuda, mps"):
        Embedder("minilm", device="tpu")
    with pytest.raises(LookupError, match="bge-m3.*minilm"):
        Embedder("no-such-model")


def test_too_long_without_truncation_keeps_the_rest(minilm):
    long_text = "word " * 400
    with pytest.raises(InputTooLongError, match="#1 has 402 tokens") as err:
        minilm.embed(["short one", long_text, "short two"], truncate=False)
    e = err.value
    assert e.too_long == {1: 402} and e.limit == 256 and e.partial_indices == [0, 2]
    expected = minilm.embed(["short one", "short two"]).dense
    np.testing.assert_allclose(e.partial.dense, expected, atol=1e-6)
    assert minilm.embed([long_text]).usage.tokens == [256]  # truncated by default


def test_cache_hits_stats_and_in_call_duplicates():
    emb = Embedder("minilm", device="cpu", cache_size=3)
    before = emb.stats()["encoder"]["texts"]
    first = emb.embed(["a", "b", "a", "a"])
    assert emb.stats()["encoder"]["texts"] - before == 2  # duplicates computed once
    np.testing.assert_array_equal(first.dense[0], first.dense[3])
    emb.embed(["a", "b"])
    cache = emb.stats()["cache"]
    assert cache["hits"] == 2 and cache["misses"] == 2 and cache["entries"] == 2
    emb.embed(["c", "d"])
    assert emb.stats()["cache"]["evictions"] == 1
    emb.embed(["a"], sparse=True)  # other outputs: another key
    assert emb.stats()["cache"]["misses"] == 5


def test_oom_splits_the_batch_then_names_the_text(minilm, monkeypatch):
    backend = minilm._runtime
    real_forward = backend.forward
    seen = []

    def forward(input_ids, attention_mask, **kw):
        seen.append(input_ids.shape[0])
        if input_ids.shape[0] > 2 or input_ids.shape[1] > 100:
            raise RuntimeOutOfMemory("injected")
        return real_forward(input_ids, attention_mask, **kw)

    monkeypatch.setattr(backend, "forward", forward)
    texts = [f"fresh text number {i}" for i in range(8)]
    r = minilm.embed(texts)
    assert seen[0] == 8 and max(seen[1:]) <= 8 and 2 in seen
    monkeypatch.setattr(backend, "forward", real_forward)
    np.testing.assert_allclose(r.dense, minilm.embed(texts, dimensions=384).dense, atol=1e-5)
    monkeypatch.setattr(backend, "forward", forward)
    with pytest.raises(OutOfMemoryError, match=r"text #2 \(2\d\d tokens\)") as err:
        minilm.embed(["tiny", "also tiny", "long " * 220])
    assert err.value.index == 2


def test_threads_get_their_own_answers(minilm):
    texts = [f"thread text {i} about search" for i in range(40)]
    expected = minilm.embed(texts, sparse=True, dimensions=128)
    results = {}

    def worker(k):
        results[k] = minilm.embed(texts[k::4], sparse=True, dimensions=128)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        np.testing.assert_allclose(results[k].dense, expected.dense[k::4], atol=1e-5)
        assert results[k].sparse == expected.sparse[k::4]


def test_large_calls_tokenise_in_overlapping_chunks(tiny_m3_dir, monkeypatch):
    """A call larger than one tokenisation chunk gives exactly what one pass gives
    (dense, learned sparse, multivector, usage), truncation and too-long texts included,
    and the next chunk is tokenised while the current one is encoded."""
    from hybridembed.service import embedder as embedder_module
    from tests.models import corpus

    long_text = " ".join(corpus(60, seed=5))  # past the tiny model's 128 tokens
    texts = corpus(10, seed=4)
    texts[4:4] = [long_text]
    texts.append(long_text + " again")
    one = Embedder(str(tiny_m3_dir), device="cpu", cache_size=0, max_batch_tokens=12)
    want = dict(sparse=True, multivector=True)
    ref = one.embed(texts, **want)

    monkeypatch.setattr(embedder_module, "TOKENIZE_CHUNK_TEXTS", 3)  # 12 // 16 is smaller
    assert not one.pipeline  # on a CPU the forward pass uses every core: no pipeline
    chunked = Embedder(str(tiny_m3_dir), device="cpu", cache_size=0, max_batch_tokens=12,
                       pipeline=True)
    calls: list[tuple[str, int]] = []
    real_tokenize, real_encode = chunked.tokenizer.encode, chunked._encoder.encode

    def tokenize(batch):
        calls.append(("tokenize", len(batch)))
        return real_tokenize(batch)

    def encode(ids, want, origin=None):
        # While chunk 0 is encoded, chunk 1 (and only chunk 1) is tokenised on the helper
        # thread: one stage at a time would run out the deadline with one chunk tokenised,
        # tokenising everything up front would show all four.
        if not any(k == "encode" for k, _ in calls):
            deadline = time.monotonic() + 10
            while sum(k == "tokenize" for k, _ in calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            calls.append(("tokenised at the first encode",
                          sum(k == "tokenize" for k, _ in calls)))
        calls.append(("encode", len(ids)))
        return real_encode(ids, want, origin)

    monkeypatch.setattr(chunked.tokenizer, "encode", tokenize)
    monkeypatch.setattr(chunked._encoder, "encode", encode)
    got = chunked.embed(texts, **want)
    assert ("tokenised at the first encode", 2) in calls
    assert [n for k, n in calls if k == "tokenize"] == [3, 3, 3, 3]
    assert [k for k, _ in calls].count("encode") == 4
    np.testing.assert_allclose(got.dense, ref.dense, atol=1e-6)
    assert got.usage.tokens == ref.usage.tokens and max(got.usage.tokens) == 128
    for a, b in zip(got.sparse, ref.sparse, strict=True):
        assert a.to_dict() == pytest.approx(b.to_dict(), abs=1e-6)
    for a, b in zip(got.multivector, ref.multivector, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)

    with pytest.raises(InputTooLongError) as err:
        chunked.embed(texts, truncate=False)
    assert sorted(err.value.too_long) == [4, 11]
    np.testing.assert_allclose(err.value.partial.dense,
                               np.delete(ref.dense, [4, 11], axis=0), atol=1e-6)


def test_pipeline_option_is_checked(tiny_m3_dir):
    with pytest.raises(InvalidOptionError, match="pipeline must be True, False or None"):
        Embedder(str(tiny_m3_dir), device="cpu", pipeline="yes")


def test_tokenisation_chunks_start_small_and_double():
    from hybridembed.service.embedder import _chunk_bounds

    assert _chunk_bounds(10_000, 1024, 4096) == [(0, 1024), (1024, 3072), (3072, 7168),
                                                  (7168, 10_000)]
    assert _chunk_bounds(5, 1024, 4096) == [(0, 5)]
    assert _chunk_bounds(0, 1024, 4096) == []
    assert _chunk_bounds(7, 4, 2) == [(0, 2), (2, 4), (4, 6), (6, 7)]  # never above most


@pytest.mark.parametrize("packing", [True, False])
def test_padded_tokens_count_the_positions_the_model_computed(packing):
    # torch runs a mixed-length batch of a BERT-layout encoder packed: its layers compute
    # the real tokens only, and the padding efficiency reported reads 1.0; run padded,
    # every position of the batch is computed.
    emb = Embedder("minilm", device="cpu", cache_size=0,
                   runtime_options={"sequence_packing": packing})
    before = dict(emb.stats()["encoder"])
    # 20 and 17 tokens: 7.5% of a padded batch would be padding, which packing removes
    # and a padded CPU batch still takes (it is cut at 10%)
    result = emb.embed(["search " * 18, "search " * 15])
    assert result.usage.tokens == [20, 17]
    after = emb.stats()["encoder"]
    assert after["batches"] - before["batches"] == 1
    tokens = after["tokens"] - before["tokens"]
    assert tokens == result.usage.total_tokens
    computed = tokens if packing else 2 * max(result.usage.tokens)
    assert after["padded_tokens"] - before["padded_tokens"] == computed
