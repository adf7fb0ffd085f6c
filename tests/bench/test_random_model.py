"""The random-model builder: what `python -m hybridembed.bench.random_model` saves loads
through the same code as real BGE-M3 weights."""

from __future__ import annotations

from hybridembed import Embedder
from hybridembed.bench import random_model
from hybridembed.registry import resolve


def test_cli_builds_a_bge_m3_layout_that_loads(tmp_path, capsys):
    assert random_model.main([str(tmp_path / "m"), "--shape", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    spec = resolve(str(tmp_path / "m"))
    assert spec.has_learned_sparse and spec.max_length == 128
    emb = Embedder(str(tmp_path / "m"), cache_size=0)
    out = emb.embed(["retrieval with dense and sparse vectors"], sparse=True, multivector=True)
    assert out.dense.shape == (1, 32) and len(out.sparse[0]) > 0
    assert out.multivector[0].shape[1] == 32


def test_bge_m3_shape_is_xlm_roberta_large():
    s = random_model.SHAPES["bge-m3"]
    assert (s["layers"], s["hidden"], s["heads"], s["vocab_size"], s["positions"]) == (
        24, 1024, 16, 250_002, 8194)
