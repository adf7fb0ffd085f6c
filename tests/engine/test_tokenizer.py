"""TextTokenizer shared between threads: truncated and untruncated calls at the same time
each get what they asked for (transformers flips truncation on the one Rust tokenizer at
every call, so unguarded concurrent calls fail or mix settings)."""

import threading

import numpy as np
import pytest

from hybridembed.engine import TextTokenizer
from hybridembed.registry import resolve


def test_concurrent_truncated_and_full_calls_keep_their_settings():
    spec = resolve("minilm")
    tok = TextTokenizer(spec.path, spec.max_length)
    texts = [" ".join(f"word{i} token{j}" for j in range(200)) for i in range(48)]
    full_length = len(tok.encode(texts[:1])[0])
    assert full_length > spec.max_length
    errors: list[BaseException] = []
    wrong: list[str] = []
    start = threading.Barrier(4)

    def work(truncated: bool) -> None:
        try:
            start.wait()
            for _ in range(15):
                if truncated:
                    got = tok.encode_truncated(texts)
                    if max(map(len, got)) != spec.max_length:
                        wrong.append(f"truncated call gave {max(map(len, got))} tokens")
                else:
                    got = tok.encode(texts)
                    if min(map(len, got)) <= spec.max_length:
                        wrong.append(f"full call gave {min(map(len, got))} tokens")
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert not wrong, wrong[:3]


def test_full_ids_equal_what_transformers_gives(tiny_m3_dir):
    """encode() calls the Rust backend directly; it must give what the transformers call
    gives, for WordPiece (MiniLM) and the BGE-M3 layout's tokenizer, after a truncated call
    left truncation switched on."""
    texts = ["Hybrid search, in one record!", "", "  spaces  and\\ttabs ", "ünïcödé 東京",
             " ".join(["long"] * 300)]
    for path, limit in ((resolve("minilm").path, 256), (tiny_m3_dir, 128)):
        tok = TextTokenizer(path, limit)
        tok.encode_truncated(texts)
        expected = tok._tok(texts, add_special_tokens=True, truncation=False)["input_ids"]
        assert tok.encode(texts) == expected
        assert len(tok.encode(texts)[-1]) > limit


@pytest.mark.parametrize("model", ["minilm", "tiny_m3"])
def test_long_texts_tokenise_in_segments_to_the_same_tokens(request, model, monkeypatch):
    """``content`` of a long text, tokenised in whitespace-cut segments, gives exactly the
    ids and character offsets of one call over the whole text (WordPiece and BPE)."""
    from hybridembed.engine import tokenizer as module

    tok = request.getfixturevalue(model).tokenizer
    words = ["hybrid", "retrieval,", "naïve", "chunk-level", "(context)", "ünïcödé", "x"]
    text = "\n".join(" ".join(words[(i * j) % len(words)] for j in range(9)) for i in range(60))
    whole = tok.content(text)
    monkeypatch.setattr(module, "SEGMENT_CHARS", 37)
    ids, offsets = tok.content(text)
    assert len(module.segments(text, 37)) > 10
    np.testing.assert_array_equal(ids, whole[0])
    np.testing.assert_array_equal(offsets, whole[1])


class _CountingBackend:
    """The Rust tokenizer, with the texts each ``encode_batch`` call was given."""

    def __init__(self, inner):
        self.inner = inner
        self.encoded: list[str] = []

    def encode_batch(self, texts, **kwargs):
        self.encoded += texts
        return self.inner.encode_batch(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_counted_texts_are_encoded_once_and_memory_stays_bounded(monkeypatch):
    """The server counts a request's tokens on admission (lengths) and its batch encodes
    the same texts: encode takes the counted ids (equal to a fresh encode) instead of
    tokenising again, each once; what is kept stays within COUNTED_TOKENS."""
    from hybridembed.engine import tokenizer as module

    spec = resolve("minilm")
    tok = TextTokenizer(spec.path, spec.max_length)
    fresh = TextTokenizer(spec.path, spec.max_length)
    texts = ["Hybrid search, in one record!", "ünïcödé 東京", "a third text"]
    backend = tok._tok._tokenizer = _CountingBackend(tok._tok._tokenizer)
    assert tok.lengths(texts[:2]) == [len(ids) for ids in fresh.encode(texts[:2])]
    assert tok.encode(texts) == fresh.encode(texts)
    assert backend.encoded == ["a third text"]  # the counted two came from memory
    assert tok.encode(texts[:1]) == fresh.encode(texts[:1])  # taken once: encoded now
    assert backend.encoded == ["a third text", texts[0]]

    monkeypatch.setattr(module, "COUNTED_TOKENS", 64)
    many = [f"text number {i} with a few words" for i in range(40)]
    tok.lengths(many[:20])
    for text in many[20:]:
        tok.lengths([text])
    assert 0 < tok._counted_tokens <= 64
    assert tok._counted_tokens == sum(map(len, tok._counted.values()))
    assert many[-1] in tok._counted and many[0] not in tok._counted  # oldest forgotten
    kept = set(tok._counted)
    backend.encoded.clear()
    assert tok.encode(many) == fresh.encode(many)
    assert backend.encoded == [t for t in many if t not in kept]  # only the forgotten
    assert tok._counted_tokens == 0 and not tok._counted
