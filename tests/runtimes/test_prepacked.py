"""Prepacked linear layers (oneDNN), opt-in in the torch runtime on a CPU: every family's
encoder can have them and gives what it gives as loaded; where the operators are missing
or disagree, the model runs as loaded (loading them leaves the process one OpenMP team:
tests/runtimes/test_openmp.py)."""

import pytest
import torch

from hybridembed.runtimes import prepacked
from hybridembed.runtimes.prepacked import PrepackedLinear, prepack_linears
from tests.runtimes import assert_same_result

TEXTS = ["ok", "a short query about rivers",
         "hybrid search keeps dense and sparse vectors in one record, near the river city"]


def _linears(module):
    return [m for m in module.modules() if type(m) is torch.nn.Linear]


def _prepacked(module):
    return [m for m in module.modules() if isinstance(m, PrepackedLinear)]


@pytest.mark.skipif(not prepacked.available(), reason="this torch build has no oneDNN")
@pytest.mark.parametrize("family", ["dense", "splade", "colbert", "modernbert", "mpnet", "qwen3"])
def test_each_family_runs_prepacked_and_gives_what_it_gives_as_loaded(family_dir, family):
    from hybridembed import Embedder

    source = str(family_dir(family))
    packed = Embedder(source, device="cpu", cache_size=0,
                      runtime_options={"prepacked_weights": True})
    plain = Embedder(source, device="cpu", cache_size=0)
    assert _prepacked(packed._runtime.module.encoder)
    assert not _linears(packed._runtime.module.encoder)
    assert not _prepacked(plain._runtime.module)
    # TorchScript cannot compile the prepacked operator call: a packing encoder's stack
    # runs eagerly, on purpose (no warning)
    assert packed._runtime.packer is None or packed._runtime.packer.scripted is None
    options = {"dense": family != "splade", "sparse": family == "splade",
               "multivector": family == "colbert"}
    for texts in (TEXTS, TEXTS[2:]):  # a batch and a lone text
        assert_same_result(packed.embed(texts, **options), plain.embed(texts, **options),
                           atol=1e-5, sparse_atol=1e-4)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(),
                               torch.nn.Linear(16, 4, bias=False))


@pytest.mark.skipif(not prepacked.available(), reason="this torch build has no oneDNN")
def test_prepacked_linear_computes_f_linear_for_any_leading_shape():
    model = _model()
    x = torch.randn(2, 3, 8)
    with torch.inference_mode():
        expected = model(x)
        assert prepack_linears(model) == 2
        assert not _linears(model)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x[0, 0]), expected[0, 0], rtol=1e-5, atol=1e-5)


def test_without_the_operators_nothing_is_swapped(monkeypatch):
    monkeypatch.setattr(prepacked, "available", lambda: False)
    model = _model()
    assert prepack_linears(model) == 0 and len(_linears(model)) == 2


@pytest.mark.skipif(not prepacked.available(), reason="this torch build has no oneDNN")
def test_operators_that_disagree_on_the_probe_leave_the_model_as_loaded(monkeypatch, caplog):
    monkeypatch.setattr(PrepackedLinear, "forward", lambda self, x: torch.zeros(
        *x.shape[:-1], self.out_features))
    model = _model()
    assert prepack_linears(model) == 0 and len(_linears(model)) == 2
    assert "disagrees" in caplog.text


def test_operators_that_fail_leave_the_model_as_loaded(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no oneDNN kernel for this CPU")

    monkeypatch.setattr(prepacked, "available", lambda: True)
    monkeypatch.setattr(PrepackedLinear, "__init__", lambda self, linear: broken())
    model = _model()
    assert prepack_linears(model) == 0 and len(_linears(model)) == 2
    assert "no oneDNN kernel" in caplog.text


@pytest.mark.skipif(not prepacked.available(), reason="this torch build has no oneDNN")
def test_a_failure_part_way_says_how_many_were_swapped(monkeypatch, caplog):
    """The layers swapped so far stay swapped (they compute the same), the rest run as
    loaded, and the count and the log say so."""
    init = PrepackedLinear.__init__

    def third_fails(self, linear):
        if linear.in_features == 16:
            raise RuntimeError("out of memory")
        init(self, linear)

    monkeypatch.setattr(PrepackedLinear, "__init__", third_fails)
    model = _model()
    x = torch.randn(4, 8)
    with torch.inference_mode():
        expected = model(x)
        assert prepack_linears(model) == 1
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert len(_linears(model)) == 1 and len(_prepacked(model)) == 1
    assert "after 1 of 2" in caplog.text


@pytest.mark.skipif(not prepacked.available(), reason="this torch build has no oneDNN")
def test_loading_frees_each_plain_weight_as_it_goes(monkeypatch):
    """When a layer is swapped, the plain weights of the layers swapped before it are
    gone already: loading holds two copies of one layer's weight at most, not of all."""
    import weakref

    init, seen, alive_at_swap = PrepackedLinear.__init__, [], []

    def watched(self, linear):
        alive_at_swap.append(sum(1 for w in seen if w() is not None and w() is not linear.weight))
        seen.append(weakref.ref(linear.weight))
        init(self, linear)

    monkeypatch.setattr(PrepackedLinear, "__init__", watched)
    model = torch.nn.Sequential(*(torch.nn.Linear(8, 8) for _ in range(4)))
    assert prepack_linears(model) == 4
    assert alive_at_swap == [0, 0, 0, 0, 0]  # the probe, then each of the four layers


@pytest.mark.skipif(not prepacked.available(), reason="this torch build has no oneDNN")
def test_a_cross_encoder_runs_prepacked_and_scores_as_loaded(tiny_ce_dir):
    """(tests/service/test_rerank_service.py checks its scores against
    sentence-transformers' CrossEncoder.)"""
    from hybridembed.rerank import CrossEncoderReranker

    ours = CrossEncoderReranker(str(tiny_ce_dir), device="cpu", prepacked_weights=True)
    assert _prepacked(ours.model) and not _linears(ours.model)
    plain = CrossEncoderReranker(str(tiny_ce_dir), device="cpu")
    assert not _prepacked(plain.model)
    queries, texts = ["a query", "another query"], TEXTS[1:]
    torch.testing.assert_close(torch.from_numpy(ours.score_pairs(queries, texts)[0]),
                               torch.from_numpy(plain.score_pairs(queries, texts)[0]),
                               rtol=1e-4, atol=1e-5)
