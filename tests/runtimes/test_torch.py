"""The torch runtime in half precision (what a GPU runs), here on the CPU: per-token
vectors travel as float16 and reach the caller as float32 unit vectors close to fp32's."""

import numpy as np
import pytest


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


def test_cpu_batches_side_by_side_equal_one_at_a_time(tiny_m3_dir):
    import torch

    from tests.models import corpus

    before = torch.get_num_threads()
    try:
        _side_by_side_equals_serial(tiny_m3_dir, corpus(30, seed=2))
    finally:
        torch.set_num_threads(before)


def _side_by_side_equals_serial(tiny_m3_dir, texts):
    import threading

    import torch

    from hybridembed import Embedder

    serial = Embedder(str(tiny_m3_dir), device="cpu", cache_size=0, max_batch_tokens=32,
                      threads=1)
    assert serial._runtime.parallel_forwards == 1
    ref = serial.embed(texts, sparse=True, multivector=True)
    torch.set_num_threads(2)
    both = Embedder(str(tiny_m3_dir), device="cpu", cache_size=0, max_batch_tokens=32)
    assert both._runtime.parallel_forwards == both._runtime.threads == 2
    got = both.embed(texts, sparse=True, multivector=True)
    assert both.stats()["encoder"]["batches"] >= 4 * 2  # enough to run side by side
    np.testing.assert_allclose(got.dense, ref.dense, atol=1e-5)
    for a, b in zip(ref.multivector, got.multivector, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert [v.to_dict() for v in got.sparse] == [pytest.approx(v.to_dict(), abs=1e-5)
                                                 for v in ref.sparse]
    # workers asked for one thread each; the process-wide value new threads start from is
    # put back
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [2]
