"""Sequence packing in the torch runtime: a mixed-length batch run packed gives what it
gives padded, for every family that packs; the others never pack."""

import numpy as np
import pytest

from hybridembed.runtimes.sequence_packing import MIN_SAVING, plan

# Lengths as concurrent clients send them: one batch, 4 to ~60 tokens.
MIXED = (["ok", "a short query", "hybrid search keeps dense and sparse vectors in one record"]
         + [" ".join(["retrieval", "of", "the", "river", "city", "index"][: 1 + i % 6] * (1 + i))
            for i in range(9)])


def test_plan_places_every_real_token_once_and_never_mixes_texts():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=37)
    p = plan(lengths, span=2304.0, max_width=512)
    assert p is not None
    assert sorted(p.source.tolist()) == sorted(
        i * lengths.max() + k for i, n in enumerate(lengths) for k in range(n))
    assert len(set(p.target.tolist())) == len(p.target) == lengths.sum()
    assert p.target.max() < p.rows * p.width
    # each token lands in its own text's segment, at its own position
    longest = lengths.max()
    assert (p.segments.reshape(-1)[p.target] == p.source // longest).all()
    assert (p.positions.reshape(-1)[p.target] == p.source % longest).all()
    assert p.rows * p.width < len(lengths) * lengths.max()


def test_plan_leaves_batches_with_little_padding_padded():
    assert plan(np.array([40, 39, 40, 38]), span=2304.0, max_width=512) is None
    assert plan(np.array([12]), span=2304.0, max_width=512) is None
    lengths = np.array([50] + [10] * 9)  # 68% padding
    p = plan(lengths, span=2304.0, max_width=512)
    assert p is not None and p.width <= 512
    assert p.rows * p.width <= (1 - MIN_SAVING) * lengths.size * lengths.max()
    assert plan(lengths, span=2304.0, max_width=50).width == 50  # the position table caps it


def _both(source):
    from hybridembed import Embedder

    packed = Embedder(str(source), device="cpu", cache_size=0)
    padded = Embedder(str(source), device="cpu", cache_size=0,
                      runtime_options={"sequence_packing": False})
    return packed, padded


def _assert_packs(emb, texts):
    from hybridembed.engine.encoder import pad_batch

    ids = emb.tokenizer.encode(texts)
    ids, mask = pad_batch(ids, list(range(len(ids))), emb.tokenizer.pad_id)
    assert emb._runtime.packer is not None and emb._runtime.packer.plan(ids, mask) is not None


@pytest.fixture
def packed_calls(monkeypatch):
    """How many batches ran packed since the test began."""
    from hybridembed.runtimes.sequence_packing import Packer

    calls = []
    original = Packer.encode

    def counted(self, ids, plan):
        calls.append(len(ids))
        return original(self, ids, plan)

    monkeypatch.setattr(Packer, "encode", counted)
    return calls


def _assert_same(a, b):
    if a.dense is not None:
        np.testing.assert_allclose(a.dense, b.dense, atol=2e-5)
    for x, y in zip(a.sparse or (), b.sparse or (), strict=True):
        assert x.indices.tolist() == y.indices.tolist()
        np.testing.assert_allclose(x.values, y.values, atol=2e-4)
    for x, y in zip(a.multivector or (), b.multivector or (), strict=True):
        np.testing.assert_allclose(x, y, atol=2e-5)


@pytest.mark.parametrize("family", ["dense", "splade"])
def test_each_packing_family_gives_what_padded_gives(family_dir, family, packed_calls):
    packed, padded = _both(family_dir(family))
    _assert_packs(packed, MIXED)
    options = {"sparse": family == "splade", "dense": family != "splade"}
    _assert_same(packed.embed(MIXED, **options), padded.embed(MIXED, **options))
    assert packed_calls  # the batch did run packed


def test_xlm_roberta_positions_start_after_padding(tiny_m3_dir, packed_calls):
    packed, padded = _both(tiny_m3_dir)
    assert packed._runtime.packer.first_position == 2  # XLM-R: padding id 1, then 2
    _assert_packs(packed, MIXED)
    options = {"sparse": True, "multivector": True}
    _assert_same(packed.embed(MIXED, **options), padded.embed(MIXED, **options))
    assert packed_calls


def test_a_padding_id_inside_a_text_runs_padded(tiny_m3):
    """RoBERTa's own position ids skip a padding id wherever it stands; packed positions
    would not, so such a batch runs padded."""
    from hybridembed.engine.encoder import pad_batch

    pad = tiny_m3.tokenizer.pad_id
    ids = tiny_m3.tokenizer.encode(MIXED)
    ids[3] = [ids[3][0], pad, *ids[3][1:]]
    batch, mask = pad_batch(ids, list(range(len(ids))), pad)
    assert tiny_m3._runtime.packer.plan(batch, mask) is None
    ids[3].pop(1)
    batch, mask = pad_batch(ids, list(range(len(ids))), pad)
    assert tiny_m3._runtime.packer.plan(batch, mask) is not None


def test_minilm_packed_equals_padded(minilm, packed_calls):
    from hybridembed import Embedder

    padded = Embedder("minilm", device="cpu", cache_size=0,
                      runtime_options={"sequence_packing": False})
    _assert_packs(minilm, MIXED)
    np.testing.assert_allclose(minilm.embed(MIXED).dense, padded.embed(MIXED).dense, atol=2e-6)
    assert packed_calls


@pytest.mark.parametrize("family", ["modernbert", "mpnet", "qwen3", "colbert"])
def test_other_position_schemes_never_pack(family_dir, family):
    """Rotary, relative and decoder positions run padded; so do ColBERT checkpoints,
    whose token plan (markers, query expansion) reshapes each batch first. Their batches
    are budgeted padded too."""
    from hybridembed import Embedder

    emb = Embedder(str(family_dir(family)), device="cpu", cache_size=0)
    assert emb._runtime.packer is None and not emb._runtime.packs_ragged


def test_a_text_with_non_finite_states_fails_alone(nan_model):
    """Packed, a NaN text would spread to the texts sharing its row; the runtime runs such
    a batch padded again, so only that text fails and the others are embedded."""
    from hybridembed.errors import NonFiniteOutputError
    from tests.models import POISONED_WORD

    texts = [*MIXED[:6], f"the {POISONED_WORD} word", *MIXED[6:]]
    _assert_packs(nan_model, texts)
    with pytest.raises(NonFiniteOutputError) as caught:
        nan_model.embed(texts, sparse=True, multivector=True)
    assert caught.value.indices == [6]
    assert np.isfinite(caught.value.partial.dense).all()
    assert len(caught.value.partial_indices) == len(texts) - 1
