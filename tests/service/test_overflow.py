"""The overflow policy through the Python API: ``error``, ``truncate`` (either side) and
``chunk`` (mean or max pooling, with and without overlap), each with its exact token
accounting, against references built by hand from texts that are the windows."""

from __future__ import annotations

import numpy as np
import pytest

from hybridembed.engine.heads import l2_normalize
from hybridembed.engine.windows import owners, windows
from hybridembed.errors import InputTooLongError, InvalidOptionError
from hybridembed.sparse import merge
from tests.models import WORDS


def single_token_words(embedder) -> list[str]:
    """Words of tests.models that are one token each for ``embedder``'s tokenizer, so a
    text of ``n`` of them is ``n`` body tokens and any run of them is a window's text."""
    words = [w for w in WORDS if len(embedder.tokenizer.encode_bare([w])[0]) == 1]
    assert len(words) > 20
    return words


def words_text(embedder, n: int, offset: int = 0) -> list[str]:
    words = single_token_words(embedder)
    return [words[(i * 7 + offset) % len(words)] for i in range(n)]


def raw(embedder, texts, **options):
    return embedder.embed(texts, normalize=False, **options)


def test_error_refuses_and_names_the_length(minilm):
    text = " ".join(words_text(minilm, 300))
    for options in ({"overflow": "error"}, {"truncate": False}):
        with pytest.raises(InputTooLongError) as info:
            minilm.embed(["fine", text], **options)
        assert info.value.too_long == {1: 302} and "overflow='chunk'" in str(info.value)
        assert info.value.partial.usage.tokens == [3]


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncate_reports_what_it_cut_and_keeps_its_side(minilm, side):
    words = words_text(minilm, 300)
    result = minilm.embed([" ".join(words)], overflow="truncate", truncation_side=side)
    assert result.usage.row(0) == {"tokens": 256, "input_tokens": 302, "dropped_tokens": 46,
                                   "chunks": 1}
    kept = words[:254] if side == "right" else words[-254:]  # left keeps the last tokens
    np.testing.assert_allclose(result.dense[0], minilm.embed([" ".join(kept)]).dense[0],
                               atol=1e-5)


def test_short_texts_are_untouched_by_every_policy(minilm):
    for overflow in ("error", "truncate", "chunk"):
        result = minilm.embed(["a short text"], overflow=overflow)
        assert result.usage.row(0) == {"tokens": 5, "input_tokens": 5, "dropped_tokens": 0,
                                       "chunks": 1}
        np.testing.assert_allclose(result.dense[0], minilm.embed(["a short text"]).dense[0],
                                   atol=1e-6)


@pytest.mark.parametrize("overlap", [0, 16])
def test_chunk_mean_equals_the_token_weighted_mean_of_its_windows(minilm, overlap):
    words = words_text(minilm, 300)
    spans = windows(300, 254, overlap)
    parts = [" ".join(words[a:b]) for a, b in spans]
    result = minilm.embed([" ".join(words)], overflow="chunk", chunk_overlap=overlap,
                          multivector=True)
    lengths = [b - a + 2 for a, b in spans]
    assert result.usage.row(0) == {"tokens": sum(lengths), "input_tokens": 302,
                                   "dropped_tokens": 0, "chunks": len(spans)}
    assert sum(lengths) == (304 if overlap == 0 else 320)
    ref = raw(minilm, parts, multivector=True)
    weights = np.asarray(lengths, np.float32)[:, None]
    expected = l2_normalize((ref.dense * weights).sum(0) / weights.sum())
    np.testing.assert_allclose(result.dense[0], expected, atol=1e-5)
    # every token's vector once: window 0 without its [SEP], window 1 past the overlap
    mv = result.multivector[0]
    assert mv.shape == (301, 384)
    np.testing.assert_allclose(mv, np.concatenate([ref.multivector[0][:254],
                                                   ref.multivector[1][overlap:]]), atol=1e-5)


def test_chunk_max_pooling(minilm):
    words = words_text(minilm, 600)
    spans = windows(600, 254, 0)
    ref = raw(minilm, [" ".join(words[a:b]) for a, b in spans])
    result = minilm.embed([" ".join(words)], overflow="chunk", chunk_pooling="max")
    assert result.usage.chunks == [3] and result.usage.tokens == [256 + 256 + 94]
    np.testing.assert_allclose(result.dense[0], l2_normalize(ref.dense.max(0)), atol=1e-5)


def test_chunk_merges_learned_sparse_by_max(tiny_m3):
    limit = tiny_m3.max_length - 2
    words = words_text(tiny_m3, limit + 40)
    spans = windows(len(words), limit, 8)
    ref = tiny_m3.embed([" ".join(words[a:b]) for a, b in spans], dense=False, sparse=True)
    got = tiny_m3.embed([" ".join(words)], dense=False, sparse=True, overflow="chunk",
                        chunk_overlap=8)
    expected = merge(ref.sparse, "max")
    np.testing.assert_array_equal(got.sparse[0].indices, expected.indices)
    np.testing.assert_allclose(got.sparse[0].values, expected.values, atol=1e-5)


def test_policy_is_part_of_the_cache_key(minilm):
    text = " ".join(words_text(minilm, 280, offset=3))
    assert minilm.embed([text]).usage.chunks == [1]
    assert minilm.embed([text], overflow="chunk").usage.chunks == [2]
    overlapped = minilm.embed([text], overflow="chunk", chunk_overlap=4)
    assert overlapped.usage.tokens == [256 + 32]  # windows 0-254 and 250-280


@pytest.mark.parametrize("options, named", [
    ({"overflow": "squeeze"}, "error, truncate, chunk"),
    ({"overflow": True}, "overflow"),
    ({"chunk_pooling": "median"}, "mean, max"),
    ({"chunk_overlap": 129}, "0 to 128"),
    ({"chunk_overlap": -1}, "chunk_overlap"),
    ({"chunk_overlap": True}, "chunk_overlap"),
    ({"truncate": False, "overflow": "chunk"}, "contradicts"),
    ({"truncate": "no"}, "truncate"),
])
def test_bad_policies_are_refused(minilm, options, named):
    with pytest.raises(InvalidOptionError) as info:
        minilm.embed(["x"], **options)
    assert named in str(info.value)


def test_windows_and_owners():
    assert windows(10, 20, 5) == [(0, 10)]
    assert windows(10, 4, 0) == [(0, 4), (4, 8), (8, 10)]
    assert windows(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    spans = windows(50, 12, 4)
    got = owners(50, spans)
    for t in range(50):  # brute force: the window where t has most context, earliest on ties
        best = max(range(len(spans)), key=lambda k: (
            min(t - spans[k][0], spans[k][1] - 1 - t) if spans[k][0] <= t < spans[k][1]
            else -1, -k))
        assert got[t] == best, t
    with pytest.raises(InvalidOptionError):
        windows(10, 4, 4)
