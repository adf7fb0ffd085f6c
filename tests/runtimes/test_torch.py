"""The torch runtime in half precision (what a GPU runs), here on the CPU: per-token
vectors travel as float16 and reach the caller as float32 unit vectors close to fp32's."""

import numpy as np


def test_bf16_multivector_is_float32_and_close_to_fp32(tiny_m3_dir):
    from hybridembed import Embedder

    texts = ["hybrid search keeps dense and sparse vectors", "one record"]
    fp32 = Embedder(str(tiny_m3_dir), device="cpu", cache_size=0).embed(texts, multivector=True)
    half = Embedder(str(tiny_m3_dir), device="cpu", dtype="bf16", cache_size=0)
    assert half.dtype == "bf16"
    out = half._runtime.forward(*_batch(half, texts), dense=False, sparse=False,
                                multivector=True)
    assert out.token_vectors.dtype == np.float16  # the wire format
    got = half.embed(texts, multivector=True)
    for a, b in zip(fp32.multivector, got.multivector, strict=True):
        assert b.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1, atol=2e-3)
        assert (a * b).sum(axis=1).min() > 0.95  # bf16 model vs fp32 model, per token


def _batch(emb, texts):
    from hybridembed.engine.encoder import pad_batch

    ids = emb.tokenizer.encode(texts)
    return pad_batch(ids, list(range(len(ids))), emb.tokenizer.pad_id)
