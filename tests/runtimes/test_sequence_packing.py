"""Sequence packing in the torch runtime: a mixed-length batch run on its real tokens only
gives what it gives padded, for every family that packs; the others never pack."""

import numpy as np
import pytest

from hybridembed.runtimes.sequence_packing import plan
from tests.runtimes import assert_same_result

# Lengths as concurrent clients send them: one batch, 4 to ~60 tokens.
MIXED = (["ok", "a short query", "hybrid search keeps dense and sparse vectors in one record"]
         + [" ".join(["retrieval", "of", "the", "river", "city", "index"][: 1 + i % 6] * (1 + i))
            for i in range(9)])


def test_plan_keeps_every_real_token_once_in_text_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=37)
    mask = (np.arange(lengths.max()) < lengths[:, None]).astype(np.int64)
    p = plan(mask)
    assert p is not None and (p.n, p.longest) == (37, lengths.max())
    assert p.source.tolist() == [i * lengths.max() + k for i, n in enumerate(lengths)
                                 for k in range(n)]


def _mask(*lengths):
    return (np.arange(max(lengths)) < np.array(lengths)[:, None]).astype(np.int64)


def test_plan_cuts_the_stream_into_runs_of_equal_length():
    p = plan(_mask(7, 7, 5, 5, 5, 3, 7))
    # (start, stop, texts, length) in the packed stream; a length coming back later is a
    # run of its own (the engine's batches are length-sorted, so that is rare)
    assert p.runs == ((0, 14, 2, 7), (14, 29, 3, 5), (29, 32, 1, 3), (32, 39, 1, 7))
    assert len(p.source) == 39
    assert plan(_mask(40, 40, 40)).runs == ((0, 120, 3, 40),)  # no padding: still planned
    assert plan(_mask(12)).runs == ((0, 12, 1, 12),)  # one text


def test_plan_refuses_what_cannot_attend():
    assert plan(_mask(50, 0, 10)) is None  # an empty text would attend to nothing
    assert plan(np.zeros((0, 4), dtype=np.int64)) is None


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
    assert emb._runtime.packer is not None and plan(mask) is not None


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


@pytest.mark.parametrize("family", ["dense", "splade"])
def test_each_packing_family_gives_what_padded_gives(family_dir, family, packed_calls):
    packed, padded = _both(family_dir(family))
    _assert_packs(packed, MIXED)
    options = {"sparse": family == "splade", "dense": family != "splade"}
    assert_same_result(packed.embed(MIXED, **options), padded.embed(MIXED, **options))
    assert packed_calls  # the batch did run packed


def test_xlm_roberta_positions_start_after_padding(tiny_m3_dir, packed_calls):
    packed, padded = _both(tiny_m3_dir)
    assert packed._runtime.packer.pad_id == 1  # XLM-R: positions count from 2
    _assert_packs(packed, MIXED)
    options = {"sparse": True, "multivector": True}
    assert_same_result(packed.embed(MIXED, **options), padded.embed(MIXED, **options))
    assert packed_calls


def test_a_padding_id_inside_a_text_gets_the_models_own_positions(tiny_m3_dir, packed_calls):
    """RoBERTa's position ids skip a padding id wherever it stands (a literal "<pad>" in a
    text, or token-id input); unpadded, positions are counted the same way."""
    packed, padded = _both(tiny_m3_dir)
    pad = packed.tokenizer.pad_id
    ids = [tuple(t) for t in packed.tokenizer.encode(MIXED)]
    ids[3] = (ids[3][0], pad, *ids[3][1:])
    assert_same_result(packed.embed(ids), padded.embed(ids))
    assert packed_calls


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


def test_a_text_with_non_finite_states_fails_alone(nan_model, packed_calls):
    """Unpadded, each text still attends only to itself: a NaN text does not spread to
    the others, so only that text fails and the others are embedded."""
    from hybridembed.errors import NonFiniteOutputError
    from tests.models import POISONED_WORD

    poisoned = f"the {POISONED_WORD} word"
    twin = "the river word"  # as many tokens: one attention call holds both
    assert len(nan_model.tokenizer.encode([twin])[0]) == len(
        nan_model.tokenizer.encode([poisoned])[0])
    texts = [*MIXED[:6], poisoned, twin, *MIXED[6:]]
    _assert_packs(nan_model, texts)
    with pytest.raises(NonFiniteOutputError) as caught:
        nan_model.embed(texts, sparse=True, multivector=True)
    assert caught.value.indices == [6]
    assert np.isfinite(caught.value.partial.dense).all()
    assert len(caught.value.partial_indices) == len(texts) - 1 and 7 in caught.value.partial_indices
    assert packed_calls


def test_one_text_and_unpadded_batches_run_packed_too(minilm, packed_calls):
    """The packed path beats the Hugging Face module even without padding (no mask, the
    fused attention kernel), so a lone text and a batch of equal lengths take it, and
    give what the module gives."""
    from hybridembed import Embedder

    padded = Embedder("minilm", device="cpu", cache_size=0,
                      runtime_options={"sequence_packing": False})
    same_length = ["river city one", "river city two", "river city six"]
    assert len({len(ids) for ids in minilm.tokenizer.encode(same_length)}) == 1
    for texts in (["a lone query about hybrid search"], same_length):
        before = len(packed_calls)
        np.testing.assert_allclose(minilm.embed(texts).dense, padded.embed(texts).dense,
                                   atol=2e-6)
        assert len(packed_calls) == before + 1


@pytest.mark.parametrize("family", ["dense", "splade", "m3"])
def test_the_scripted_layer_stack_gives_exactly_what_the_eager_one_gives(
        family, family_dir, tiny_m3_dir):
    """The layer stack runs as TorchScript by default (BERT and XLM-RoBERTa layouts); the
    same operators run eagerly with ``torchscript=False``: the same bits."""
    from hybridembed import Embedder

    source = str(tiny_m3_dir if family == "m3" else family_dir(family))
    scripted = Embedder(source, device="cpu", cache_size=0)
    eager = Embedder(source, device="cpu", cache_size=0, runtime_options={"torchscript": False})
    assert scripted._runtime.packer.scripted is not None
    assert eager._runtime.packer.scripted is None
    options = {"dense": family != "splade", "sparse": family != "dense",
               "multivector": family == "m3"}
    for texts in (MIXED, MIXED[2:3]):  # many runs, one run
        assert_same_result(scripted.embed(texts, **options), eager.embed(texts, **options),
                           atol=0, sparse_atol=0)


def _python_calls(packer, texts, tokenizer):
    """How many calls into C (torch operators included) Python makes while ``packer``
    encodes ``texts``: each one takes the GIL back after releasing it."""
    import sys

    import torch

    from hybridembed.engine.encoder import pad_batch

    ids, mask = pad_batch(tokenizer.encode(texts), list(range(len(texts))), tokenizer.pad_id)
    p = plan(mask)
    calls = []

    def profile(frame, event, arg):
        if event == "c_call":
            calls.append(arg)

    with torch.inference_mode():
        sys.setprofile(profile)
        try:
            packer.encode(torch.from_numpy(ids), p)
        finally:
            sys.setprofile(None)
    return len(p.runs), len(calls)


def test_the_scripted_stack_is_one_call_whatever_the_runs(minilm):
    """Eager, every run of every layer is a dozen operator calls, each taking the GIL back
    from whichever thread holds it (the server's event loop, the other lane); scripted,
    the whole stack is one call, however many runs the batch has."""
    from hybridembed import Embedder

    eager = Embedder("minilm", device="cpu", cache_size=0, runtime_options={"torchscript": False})
    two_runs, many_runs = MIXED[1:3], MIXED  # both padded
    runs, calls = zip(*(_python_calls(minilm._runtime.packer, t, minilm.tokenizer)
                        for t in (two_runs, many_runs)), strict=True)
    assert runs[0] == 2 and runs[1] >= 8
    assert calls[0] == calls[1]
    eager_calls = [_python_calls(eager._runtime.packer, t, eager.tokenizer)[1]
                   for t in (two_runs, many_runs)]
    assert eager_calls[1] > eager_calls[0] + 6 * (runs[1] - 2)  # >= one call per run and layer
    assert calls[1] < eager_calls[0]


def _bert(hidden_act):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, hidden_act=hidden_act,
                        max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False).eval()


@pytest.mark.parametrize("hidden_act", ["gelu", "relu", "gelu_pytorch_tanh", "silu",
                                       "quick_gelu", "gelu_10"])
def test_an_activation_without_a_scriptable_stand_in_runs_eagerly(hidden_act):
    """HF's activation modules are not scriptable: the stack swaps in the torch.nn module
    that computes exactly the same values; one without such a twin runs the model's own
    activation eagerly: QuickGELU, and GELU clipped at +-10 ("gelu_10"), which equals GELU
    on small values only. Either way: the model's own hidden states."""
    import torch

    from hybridembed.runtimes.sequence_packing import Packer

    model = _bert(hidden_act)
    packer = Packer.for_encoder(model)
    assert (packer.scripted is None) == (hidden_act in ("quick_gelu", "gelu_10"))
    lengths = [9, 9, 5, 3, 3, 3, 12]
    mask = _mask(*lengths)
    ids = torch.from_numpy(np.where(mask, np.arange(mask.size).reshape(mask.shape) % 97 + 2, 0))
    with torch.inference_mode():
        packed = packer.encode(ids, plan(mask))
        reference = model(input_ids=ids, attention_mask=torch.from_numpy(mask)).last_hidden_state
    real = torch.from_numpy(mask).bool()
    torch.testing.assert_close(packed[real], reference[real], atol=2e-6, rtol=1e-5)
    assert not packed[~real].any()


def test_with_torchscript_turned_off_the_stack_runs_eagerly():
    """``PYTORCH_JIT=0`` makes ``torch.jit.script`` hand the module back uncompiled: the
    packer then says it runs eagerly, and embeds as usual."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json\n"
            "from hybridembed import Embedder\n"
            "emb = Embedder('minilm', device='cpu', cache_size=0)\n"
            "print(json.dumps([emb._runtime.packer.scripted is None,\n"
            "                  emb.embed(['a lone text']).dense.shape[1]]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                           "PYTORCH_JIT": "0"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.split("\n")[-2]) == [True, 384]

