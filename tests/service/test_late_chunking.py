"""Late chunking through ``Embedder.embed_chunks``: every chunk's dense, learned sparse and
multi-vector output equals a reference pooled by hand from the model's full token states
(run here with transformers directly), for documents within the limit and for documents
that need macro-windows (each token's state taken, by brute force, from the window where
it has the most context)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel

from hybridembed.engine.heads import l2_normalize
from hybridembed.engine.windows import windows
from hybridembed.errors import InvalidInputError, InvalidOptionError
from hybridembed.sparse import SparseVector
from tests.service.test_overflow import words_text


class Reference:
    """The model's last hidden states and heads, computed with transformers and torch."""

    def __init__(self, embedder):
        self.embedder = embedder
        spec = embedder.spec
        self.model = AutoModel.from_pretrained(spec.path).eval()
        self.sparse_head, self.colbert_head = (
            None if p is None else torch.load(p, weights_only=True)
            for p in (spec.sparse_head, spec.colbert_head))

    def states(self, ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()

    def token_states(self, body: list[int], size: int, overlap: int) -> np.ndarray:
        """Each body token's state from the window where it has the most context."""
        tok = self.embedder.tokenizer
        spans = windows(len(body), size, overlap)
        per_window = [self.states(tok.wrap(body[a:b]))[len(tok.special_prefix):][:b - a]
                      for a, b in spans]
        out = []
        for t in range(len(body)):
            k = max((k for k, (a, b) in enumerate(spans) if a <= t < b),
                    key=lambda k: (min(t - spans[k][0], spans[k][1] - 1 - t), -k))
            out.append(per_window[k][t - spans[k][0]])
        return np.stack(out)

    def chunk(self, states: np.ndarray, ids: np.ndarray, a: int, b: int):
        span = states[a:b]
        dense = l2_normalize(span.mean(0))
        sparse = vectors = None
        if self.sparse_head is not None:
            w = torch.relu(torch.from_numpy(span) @ self.sparse_head["weight"].T
                           + self.sparse_head["bias"]).numpy()[:, 0]
            special = self.embedder.tokenizer.special_ids
            keep = (w > 0) & ~np.isin(ids[a:b], special)
            sparse = SparseVector.from_pairs(ids[a:b][keep], w[keep], reduce="max")
        if self.colbert_head is not None:
            v = (torch.from_numpy(span) @ self.colbert_head["weight"].T
                 + self.colbert_head["bias"]).numpy()
            vectors = l2_normalize(v)
        else:
            vectors = l2_normalize(span)
        return dense, sparse, vectors


_REFERENCES: dict[int, Reference] = {}


def check(embedder, document: str, got, window_overlap: int):
    ref = _REFERENCES.setdefault(id(embedder), Reference(embedder))
    tok = embedder.tokenizer
    ids, _ = tok.content(document)
    size = embedder.max_length - len(tok.special_prefix) - len(tok.special_suffix)
    states = ref.token_states(ids.tolist(), size, window_overlap)
    learned = embedder.spec.has_learned_sparse
    for i, (chunk, item) in enumerate(got):
        dense, sparse, vectors = ref.chunk(states, ids, chunk.token_start, chunk.token_end)
        np.testing.assert_allclose(item.dense, dense, atol=1e-5, err_msg=f"chunk {i}")
        np.testing.assert_allclose(item.multivector, vectors, atol=1e-5, err_msg=f"chunk {i}")
        if learned:
            np.testing.assert_array_equal(item.sparse.indices, sparse.indices)
            np.testing.assert_allclose(item.sparse.values, sparse.values, atol=1e-5)
        else:  # BM25 from the chunk's own text
            assert item.sparse == embedder.embed([chunk.text], dense=False,
                                                 sparse=True).sparse[0]
        assert item.tokens == chunk.token_end - chunk.token_start


@pytest.fixture(scope="module", params=["tiny_m3", "minilm"])
def model(request):
    return request.getfixturevalue(request.param)


def test_within_the_limit_spans_pool_the_full_states(model):
    words = words_text(model, model.max_length - 10)
    document = " ".join(words)
    got = model.embed_chunks(document, every=17, overlap=3, sparse=True, multivector=True)
    assert got.windows == 1 and len(got) == len(windows(len(words), 17, 3))
    check(model, document, got, 0)


@pytest.mark.parametrize("name, window_overlap", [
    ("tiny_m3", None), ("tiny_m3", 0), ("tiny_m3", 20), ("minilm", None)])
def test_macro_windows_take_each_token_from_its_best_window(request, name, window_overlap):
    model = request.getfixturevalue(name)
    words = words_text(model, int(model.max_length * 2.6))
    document = " ".join(words)
    got = model.embed_chunks(document, every=41, sparse=True, multivector=True,
                             window_overlap=window_overlap)
    size = model.max_length - 2
    overlap = size // 4 if window_overlap is None else window_overlap
    assert got.windows == len(windows(len(words), size, overlap)) > 2
    assert got.tokens == sum(b - a + 2 for a, b in windows(len(words), size, overlap))
    check(model, document, got, overlap)


def test_spans_chunks_and_every_agree(minilm):
    document = "The river floods. It rises in spring.\n\nThe city built a wall. It held."
    texts = ["The river floods. It rises in spring.", "\n\n", "The city built a wall. It held."]
    with pytest.raises(InvalidOptionError, match=r"chunks\[1\].*holds no token"):
        minilm.embed_chunks(document, chunks=texts)
    texts = [texts[0] + "\n\n", texts[2]]
    by_text = minilm.embed_chunks(document, chunks=texts)
    by_span = minilm.embed_chunks(document, spans=[(0, len(texts[0])),
                                                   (len(texts[0]), len(document))])
    assert [c.text for c in by_text.chunks] == texts
    assert [(c.token_start, c.token_end) for c in by_span.chunks] == \
        [(c.token_start, c.token_end) for c in by_text.chunks]
    np.testing.assert_allclose(by_text.result.dense, by_span.result.dense, atol=1e-6)
    # overlapping and out-of-order spans are fine: each is pooled on its own
    mixed = minilm.embed_chunks(document, spans=[(40, 70), (0, 50)])
    assert [c.text for c in mixed.chunks] == [document[40:70], document[:50]]
    every = minilm.embed_chunks(document, every=5, overlap=2)
    assert [c.tokens for c in every.chunks][:2] == [5, 5]
    assert every.chunks[1].token_start == 3


@pytest.mark.parametrize("options, named", [
    ({}, "exactly one"),
    ({"every": 5, "chunks": ["x"]}, "exactly one"),
    ({"spans": [(0, 500)]}, "spans[0]"),
    ({"spans": [(5, 5)]}, "spans[0]"),
    ({"spans": [(True, 3)]}, "spans[0]"),
    ({"spans": "0-3"}, "pairs"),
    ({"chunks": ["The river", " floods"]}, "concatenate"),
    ({"chunks": "The river floods."}, "list of strings"),
    ({"every": 0}, "every"),
    ({"every": 4, "overlap": 4}, "overlap"),
    ({"every": 4, "window_overlap": 200}, "window_overlap"),
    ({"every": 4, "sparse": 1}, "sparse"),
    ({"every": 4, "dimensions": 0}, "dimensions"),
])
def test_bad_chunking_is_refused(minilm, options, named):
    with pytest.raises(InvalidOptionError) as info:
        minilm.embed_chunks("The river floods.", **options)
    assert named in str(info.value)


def test_bad_documents_are_refused(minilm):
    with pytest.raises(InvalidInputError):
        minilm.embed_chunks("   ", every=4)
    with pytest.raises(InvalidInputError):
        minilm.embed_chunks(None, every=4)


# -- other model families ---------------------------------------------------------------


def _family(tmp_path_factory, build, name):
    from hybridembed import Embedder

    return Embedder(str(build(tmp_path_factory.mktemp(name) / "model")), device="cpu",
                    cache_size=0)


def _full_states(embedder, document: str) -> tuple[np.ndarray, np.ndarray]:
    """The document's token ids and their last hidden states (one window, no specials),
    computed with transformers."""
    from transformers import AutoModelForMaskedLM

    tok = embedder.tokenizer
    ids, _ = tok.content(document)
    cls = AutoModelForMaskedLM if embedder.spec.splade is not None else AutoModel
    model = cls.from_pretrained(embedder.spec.path).eval()
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([tok.wrap(ids.tolist())]), output_hidden_states=True)
    states = out.hidden_states[-1][0, len(tok.special_prefix):][:len(ids)]
    return ids, states, model


def test_splade_chunks_pool_the_mlm_head_over_their_span(tmp_path_factory):
    from tests.models import build_splade

    emb = _family(tmp_path_factory, build_splade, "splade")
    document = "Late chunking keeps context. " * 6 + "Sparse lexical weights per chunk."
    got = emb.embed_chunks(document, every=9, overlap=2, dense=False, sparse=True)
    ids, states, model = _full_states(emb, document)
    head = model.cls  # BertForMaskedLM: transform + decoder
    for chunk, item in got:
        with torch.inference_mode():
            logits = head(states[chunk.token_start:chunk.token_end])  # (span, vocab)
        weights = torch.log1p(torch.relu(logits.amax(0))).numpy()
        nz = np.flatnonzero(weights > 0)
        np.testing.assert_array_equal(item.sparse.indices, nz)
        np.testing.assert_allclose(item.sparse.values, weights[nz], rtol=1e-4, atol=1e-5)


def test_dense_modules_apply_to_each_chunk(tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    from tests.models import build_st_dense

    emb = _family(tmp_path_factory, build_st_dense, "st-dense")
    document = "one two three four five six seven eight nine ten eleven twelve " * 3
    got = emb.embed_chunks(document, every=8, overlap=0)
    ids, states, _ = _full_states(emb, document)
    st = SentenceTransformer(str(emb.spec.path), device="cpu")
    dense_modules = [m for m in st if type(m).__name__ == "Dense"]
    assert got.result.dense.shape[1] == 16
    for chunk, item in got:
        x = states[chunk.token_start:chunk.token_end].mean(0, keepdim=True)
        with torch.inference_mode():
            for m in dense_modules:
                x = m({"sentence_embedding": x})["sentence_embedding"]
        np.testing.assert_allclose(item.dense, l2_normalize(x[0].numpy()), atol=1e-5)


def test_colbert_checkpoints_are_refused_with_a_reason(tmp_path_factory):
    from hybridembed.errors import UnsupportedOutputError
    from tests.models import build_colbert

    emb = _family(tmp_path_factory, build_colbert, "colbert")
    with pytest.raises(UnsupportedOutputError, match="ColBERT"):
        emb.embed_chunks("a document about things", every=2, dense=False, multivector=True)
