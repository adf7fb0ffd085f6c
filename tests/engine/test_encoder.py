"""The encoder's pipeline (``overlap=True``, on for accelerators): batch i+1's forward pass
overlaps batch i's finishing, results equal the one-batch path, and an error in either
stage reaches the caller (nothing hangs). Without overlap everything runs on the caller's
thread. A small deterministic runtime stands in for a model here; the real runtimes are
covered through the Embedder's tests."""

import dataclasses
import threading
import time

import numpy as np
import pytest

from hybridembed.engine import Encoder, Outputs
from hybridembed.engine import encoder as encoder_module
from hybridembed.runtimes.base import RuntimeOutput

SPECIAL = np.array([0, 1, 2], dtype=np.int64)


class ArithmeticRuntime:
    """dense = sum of ids; token weight = id / 100; token vector = [id, 1] normalised."""

    device = "cpu"
    dtype = "fp32"

    def __init__(self):
        self.forward_started = []  # one Event per forward call, set when it starts
        self.fail_on_call: int | None = None

    def forward(self, input_ids, attention_mask, *, dense, sparse, multivector):
        call = len(self.forward_started)
        started = threading.Event()
        self.forward_started.append(started)
        started.set()
        if call == self.fail_on_call:
            raise RuntimeError("forward failed on purpose")
        ids = (input_ids * attention_mask).astype(np.float32)
        vectors = np.stack([ids[:, 1:], attention_mask[:, 1:].astype(np.float32)], axis=-1)
        norms = np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        return RuntimeOutput(dense=ids.sum(axis=1, keepdims=True) if dense else None,
                             token_weights=ids / 100 if sparse else None,
                             token_vectors=vectors / norms if multivector else None)


def _ids(n: int) -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [[1, *rng.integers(3, 50, size=rng.integers(1, 12)).tolist(), 2] for _ in range(n)]


WANT = Outputs(dense=True, sparse=True, multivector=True)


def test_many_batches_equal_one_batch():
    ids = _ids(40)
    one = Encoder(ArithmeticRuntime(), 0, SPECIAL, max_batch_tokens=10_000).encode(ids, WANT)
    runtime = ArithmeticRuntime()
    many = Encoder(runtime, 0, SPECIAL, max_batch_tokens=24, overlap=True).encode(ids, WANT)
    assert len(runtime.forward_started) > 5
    for a, b, x in zip(one, many, ids, strict=True):
        assert a.dense[0] == b.dense[0] == sum(x)
        assert a.sparse.to_dict() == b.sparse.to_dict() == pytest.approx(
            {i: i / 100 for i in x if i > 2})
        np.testing.assert_allclose(a.multivector, b.multivector)
        assert b.multivector.shape == (len(x) - 1, 2)


def test_finishing_a_batch_overlaps_the_next_forward(monkeypatch):
    """Batch 0 is finished on the helper thread while batch 1 runs: finishing batch 0
    sees batch 1's forward start, which a one-stage-at-a-time encoder never lets happen
    (it would finish batch 0 first and wait out the deadline)."""
    runtime = ArithmeticRuntime()
    first: list[tuple[str, bool]] = []
    real_fill = encoder_module.fill_rows

    def fill(*args):
        if not first:
            deadline = time.monotonic() + 10
            while len(runtime.forward_started) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            first.append((threading.current_thread().name, len(runtime.forward_started) >= 2))
        real_fill(*args)

    monkeypatch.setattr(encoder_module, "fill_rows", fill)
    rows = Encoder(runtime, 0, SPECIAL, max_batch_tokens=24, overlap=True).encode(_ids(30), WANT)
    (thread, overlapped), = first
    assert thread.startswith("hybridembed-finish") and overlapped
    assert all(r.dense is not None for r in rows)


def test_without_overlap_everything_runs_on_the_callers_thread(monkeypatch):
    threads = set()
    real_fill = encoder_module.fill_rows

    def fill(*args):
        threads.add(threading.current_thread().name)
        real_fill(*args)

    monkeypatch.setattr(encoder_module, "fill_rows", fill)
    rows = Encoder(ArithmeticRuntime(), 0, SPECIAL, max_batch_tokens=24).encode(_ids(30), WANT)
    assert threads == {threading.current_thread().name}
    assert all(r.dense is not None for r in rows)


def test_a_forward_error_reaches_the_caller():
    runtime = ArithmeticRuntime()
    runtime.fail_on_call = 3
    with pytest.raises(RuntimeError, match="on purpose"):
        Encoder(runtime, 0, SPECIAL, max_batch_tokens=24, overlap=True).encode(_ids(30), WANT)


@pytest.mark.parametrize("failing", ["first", "last"])
def test_a_finishing_error_reaches_the_caller(monkeypatch, failing):
    """Whichever batch fails to finish — the first (seen when the next batch is handed
    over) or the last (seen only at the end) — the call raises; no row is left empty."""
    runtime = ArithmeticRuntime()
    real_fill = encoder_module.fill_rows
    calls = []

    def fill(*args):
        calls.append(1)
        batches = len(runtime.forward_started)
        if (failing == "first" and len(calls) == 1) or (
                failing == "last" and len(calls) == batches and batches > 3):
            raise ValueError("finishing failed on purpose")
        real_fill(*args)

    monkeypatch.setattr(encoder_module, "fill_rows", fill)
    with pytest.raises(ValueError, match="on purpose"):
        Encoder(runtime, 0, SPECIAL, max_batch_tokens=24, overlap=True).encode(_ids(30), WANT)


class HalfVectorsRuntime(ArithmeticRuntime):
    """Sends its token vectors in float16, as the torch runtime does for a bf16 model."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        return dataclasses.replace(out, token_vectors=out.token_vectors.astype(np.float16))


def test_half_precision_vectors_come_back_as_float32():
    ids = _ids(12)
    full = Encoder(ArithmeticRuntime(), 0, SPECIAL, max_batch_tokens=40).encode(ids, WANT)
    half = Encoder(HalfVectorsRuntime(), 0, SPECIAL, max_batch_tokens=40).encode(ids, WANT)
    for a, b in zip(full, half, strict=True):
        assert b.multivector.dtype == np.float32 and b.multivector.flags.c_contiguous
        np.testing.assert_allclose(a.multivector, b.multivector, atol=1e-3)


def test_widen_copies_every_row_in_float32():
    half = np.random.default_rng(0).standard_normal((37, 5, 3)).astype(np.float16)
    wide = encoder_module.widen(half)
    assert wide.dtype == np.float32 and wide.shape == half.shape
    np.testing.assert_array_equal(wide, half.astype(np.float32))
    assert encoder_module.widen(half[:1]).shape == (1, 5, 3)  # fewer rows than threads


class SideBySideRuntime(ArithmeticRuntime):
    """Offers two forwards at once; each must overlap another (a barrier) and be asked
    for one compute thread."""

    parallel_forwards = 2

    def __init__(self):
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=10)
        self.threads_asked: list[int | None] = []
        self.callers: set[str] = set()

    def forward(self, *args, threads=None, **kwargs):
        self.threads_asked.append(threads)
        self.callers.add(threading.current_thread().name)
        if len(self.threads_asked) <= 2:
            self.barrier.wait()  # the first two batches run at the same time, or this fails
        return super().forward(*args, **kwargs)


def test_batches_run_side_by_side_with_one_thread_each():
    ids = _ids(40)
    one = Encoder(ArithmeticRuntime(), 0, SPECIAL, max_batch_tokens=10_000).encode(ids, WANT)
    runtime = SideBySideRuntime()
    encoder = Encoder(runtime, 0, SPECIAL, max_batch_tokens=24)
    rows = encoder.encode(ids, WANT)
    assert len(runtime.forward_started) > 5 and set(runtime.threads_asked) == {1}
    assert len(runtime.callers) == 2 and threading.current_thread().name not in runtime.callers
    for a, b in zip(one, rows, strict=True):
        assert a.dense[0] == b.dense[0] and a.sparse.to_dict() == b.sparse.to_dict()
        np.testing.assert_allclose(a.multivector, b.multivector)
    assert encoder.stats.batches == len(runtime.forward_started)
    assert encoder.stats.texts == 40 and encoder.stats.tokens == sum(map(len, ids))


def test_few_batches_stay_on_the_callers_thread_with_every_thread():
    runtime = SideBySideRuntime()
    runtime.barrier = threading.Barrier(1)
    # texts of one length: a padded CPU batch of mixed lengths is also cut into runs of
    # similar lengths (see test_packing), which would change the count of batches here
    ids = [[1, *range(3, 13), 2]] * 12
    Encoder(runtime, 0, SPECIAL, max_batch_tokens=10_000).encode(ids[:5], WANT)
    Encoder(runtime, 0, SPECIAL, max_batch_tokens=max(map(len, ids)) * 2).encode(ids, WANT)
    assert 3 <= len(runtime.threads_asked) < 1 + 2 * encoder_module.SIDE_BY_SIDE_MIN_BATCHES
    assert set(runtime.threads_asked) == {None}
    assert runtime.callers == {threading.current_thread().name}


def test_a_failing_batch_side_by_side_stops_the_rest():
    runtime = SideBySideRuntime()
    runtime.barrier = threading.Barrier(1)
    runtime.fail_on_call = 0
    with pytest.raises(RuntimeError, match="on purpose"):
        Encoder(runtime, 0, SPECIAL, max_batch_tokens=8).encode(_ids(60), WANT)
    # at most the batches already running or picked up when the first one failed
    assert len(runtime.forward_started) < 10
