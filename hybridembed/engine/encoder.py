"""The encoder: packs token id lists into padded batches by token budget, runs the
runtime, splits a batch in half on out-of-memory, and returns one raw row per text in
the order it was given.

With ``overlap`` (the Embedder turns it on for accelerators), turning batch *i*'s padded
outputs into per-text rows (slicing, learned-sparse extraction) runs on a helper thread
while batch *i+1* is in the runtime (torch and ONNX Runtime release the GIL there). At
most one batch waits to be finished, so memory stays bounded by two batches' outputs. A
failure in either stage stops the call and is raised once the other stage has stopped
(when both fail, the forward pass's error is the one raised). On a CPU the forward pass
already uses every core: measured there, the helper thread cost ~5% and gained nothing.

A runtime with ``parallel_forwards`` > 1 (torch on a multi-core CPU) gets that many
batches at once, each on its own thread with one compute thread (``threads=1``): small
encoder matrices split across cores waste more than whole batches side by side (MiniLM
on 2 cores: 234-239 vs 217 texts/s). A call of few batches (fewer than
``SIDE_BY_SIDE_MIN_BATCHES`` per worker) runs them one at a time with every core."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from ..errors import OutOfMemoryError
from ..runtimes.base import Runtime, RuntimeOutOfMemory, RuntimeOutput
from ..sparse import SparseVector
from .heads import multivector_row, sparse_rows
from .packing import pack_by_token_budget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    """Which outputs the forward pass must produce."""

    dense: bool = True
    sparse: bool = False  # learned sparse weights (only for models with the head)
    multivector: bool = False
    query: bool = False  # a batch of queries (ColBERT runtimes expand them)
    # per-position outputs for late chunking: last hidden states, and the learned sparse
    # weight of every position when ``sparse`` (runtimes with ``token_states`` only)
    states: bool = False

    @property
    def any(self) -> bool:
        return self.dense or self.sparse or self.multivector or self.states


@dataclass
class RawRow:
    dense: np.ndarray | None = None  # pooled, not normalised
    sparse: SparseVector | None = None
    multivector: np.ndarray | None = None
    finite: bool = True  # False: some output of this text was NaN or infinite
    states: np.ndarray | None = None  # (tokens, hidden) last hidden states, CLS first
    weights: np.ndarray | None = None  # (tokens,) learned sparse weight of each position


@dataclass
class EncoderStats:
    """Totals of the forward passes so far. ``tokens``: real tokens sent to the model;
    ``padded_tokens``: the positions its layers computed, padding included (a batch a
    runtime ran packed computes its real tokens only); ``forward_seconds``: wall time in
    the runtime's ``forward``."""

    batches: int = 0
    texts: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    oom_splits: int = 0
    forward_seconds: float = 0.0


class Encoder:
    def __init__(self, runtime: Runtime, pad_id: int, special_ids: np.ndarray,
                 max_batch_tokens: int, max_batch_size: int | None = None,
                 overlap: bool = False):
        self.runtime = runtime
        self.overlap = overlap
        self.pad_id = pad_id
        self.special_ids = special_ids
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_size = max_batch_size
        self.stats = EncoderStats()
        self._stats_lock = threading.Lock()
        self._workers: ThreadPoolExecutor | None = None  # made at the first side-by-side call

    @property
    def cuts_by_cost(self) -> bool:
        """Whether :meth:`cut` weighs padding against passes: a runtime that runs its
        batches padded, on a CPU (``CPU_BATCH_OVERHEAD_TOKENS``). There texts of similar
        lengths are cheaper together; elsewhere a batch is filled up to the budget."""
        return (not getattr(self.runtime, "packs_ragged", False)
                and self.runtime.device == "cpu")

    def cut(self, lengths: Sequence[int]) -> list[list[int]]:
        """The batches :meth:`encode` runs for texts of these token ``lengths``: lists of
        positions into ``lengths``, each position once (see
        :func:`~hybridembed.engine.packing.pack_by_token_budget`)."""
        padded = not getattr(self.runtime, "packs_ragged", False)
        return pack_by_token_budget(
            lengths, self.max_batch_tokens, self.max_batch_size, padded=padded,
            batch_overhead=CPU_BATCH_OVERHEAD_TOKENS if self.cuts_by_cost else None,
            max_padded=None if padded else RAGGED_MAX_PADDED * self.max_batch_tokens)

    def encode(self, ids: Sequence[Sequence[int]], want: Outputs,
               origin: Sequence[int] | None = None, threads: int | None = None
               ) -> list[RawRow]:
        """Encode token id lists. ``origin[i]`` is the caller's index of ``ids[i]``, used
        to name the text in an out-of-memory error. ``threads`` (runtimes with
        ``parallel_forwards`` > 1): run the batches one after another on the calling
        thread with that many compute threads, for a caller that runs such calls side by
        side itself."""
        rows = [RawRow() for _ in ids]
        if not want.any or not ids:
            return rows
        origin = list(origin) if origin is not None else list(range(len(ids)))
        batches = self.cut([len(x) for x in ids])

        def finish(batch: list[int], input_ids: np.ndarray, out: RuntimeOutput) -> None:
            fill_rows(rows, batch, [len(ids[i]) for i in batch], input_ids, out,
                       self.special_ids)

        side_by_side = getattr(self.runtime, "parallel_forwards", 1)
        if threads is not None and side_by_side > 1:
            for batch in batches:
                self._run(batch, ids, want, origin, finish, threads)
            return rows
        if side_by_side > 1 and len(batches) >= SIDE_BY_SIDE_MIN_BATCHES * side_by_side:
            self._side_by_side(side_by_side, batches, ids, want, origin, finish)
            return rows
        if not self.overlap or len(batches) == 1:
            for batch in batches:
                self._run(batch, ids, want, origin, finish)
            return rows
        with ThreadPoolExecutor(1, thread_name_prefix="hybridembed-finish") as pool:
            waiting: Future | None = None

            def hand_over(batch: list[int], input_ids: np.ndarray, out: RuntimeOutput) -> None:
                nonlocal waiting
                if waiting is not None:
                    waiting.result()  # at most one batch waits; its error surfaces here
                waiting = pool.submit(finish, batch, input_ids, out)

            for batch in batches:
                self._run(batch, ids, want, origin, hand_over)
            if waiting is not None:
                waiting.result()
        return rows

    def _side_by_side(self, workers: int, batches: list[list[int]], ids, want: Outputs,
                      origin, finish: Callable[[list[int], np.ndarray, RuntimeOutput], None]
                      ) -> None:
        """Run ``workers`` batches at a time, one thread each, each finished by the thread
        that ran it (rows are distinct per batch). The threads are kept for the next call
        (new threads each time grew RSS by ~300 MB: per-thread allocator arenas and MKL
        buffers). The first error cancels the batches not yet started and is raised once
        the running ones are done."""
        if self._workers is None:
            self._workers = ThreadPoolExecutor(workers, thread_name_prefix="hybridembed-forward")
        futures = [self._workers.submit(self._run, batch, ids, want, origin, finish, 1)
                   for batch in batches]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)
            raise

    def _run(self, batch: list[int], ids, want: Outputs, origin,
             finish: Callable[[list[int], np.ndarray, RuntimeOutput], None],
             threads: int | None = None) -> None:
        input_ids, mask = pad_batch(ids, batch, self.pad_id)
        longest = input_ids.shape[1]
        started = time.perf_counter()
        options = {"threads": threads} if threads else {}
        if want.query:
            options["query"] = True
        if want.states:
            options["states"] = True
        try:
            out = self.runtime.forward(input_ids, mask, dense=want.dense, sparse=want.sparse,
                                       multivector=want.multivector, **options)
        except RuntimeOutOfMemory:
            if len(batch) == 1:
                i = batch[0]
                raise OutOfMemoryError(origin[i], len(ids[i]), self.runtime.device) from None
            with self._stats_lock:
                self.stats.oom_splits += 1
            half = len(batch) // 2
            log.warning("out of memory on a batch of %d texts x %d tokens; splitting in half",
                        len(batch), longest)
            self._run(batch[:half], ids, want, origin, finish, threads)
            self._run(batch[half:], ids, want, origin, finish, threads)
            return
        with self._stats_lock:
            self.stats.forward_seconds += time.perf_counter() - started
            self.stats.batches += 1
            self.stats.texts += len(batch)
            self.stats.tokens += int(mask.sum())
            self.stats.padded_tokens += mask.size if out.positions is None else out.positions
        finish(batch, input_ids, out)


# Batches per worker a call needs before its batches run side by side. The server's
# merged calls (one or two small batches) ran 1.6x slower side by side under 64 clients
# (87 vs 137 texts/s): the event loop needs a core too, and two tiny batches gain nothing.
SIDE_BY_SIDE_MIN_BATCHES = 4

# What one more forward pass costs on a CPU, in tokens: each pass reads every layer's
# weights once, whatever its size, so a padded batch of many lengths is cut into runs of
# similar lengths only where the padding saved is worth more (engine/packing.py). Measured
# on ONNX Runtime's one-thread session (docs/BENCHMARKS.md, "Batches cut by predicted
# cost"). Not on accelerators, where a smaller batch costs nearly what a full one does:
# there a batch is filled up to the budget.
CPU_BATCH_OVERHEAD_TOKENS = 10
# A runtime that skips padding is budgeted by real tokens, but hands its hidden states
# back padded, and the heads run on that layout (SPLADE's vocabulary logits are
# texts x longest x vocab): one 512-token text beside a hundred short ones would make
# 51,712 positions of them. Its batches also stay within this many times the budget,
# padded.
RAGGED_MAX_PADDED = 4

# Threads that widen half-precision vectors to float32 (see widen()).
WIDEN_THREADS = min(8, os.cpu_count() or 1)


def widen(half: np.ndarray) -> np.ndarray:
    """A float32 copy of a half-precision array, written by several threads. Writing that
    much fresh memory is the cost (page faults): on the H100 machine's host one thread
    widened 1.4 GB/s of float32 results, under the GPU's rate for BGE-M3's ColBERT
    vectors; NumPy releases the GIL while it casts, so threads add up."""
    out = np.empty(half.shape, np.float32)
    cuts = np.linspace(0, len(half), WIDEN_THREADS + 1).astype(int)
    parts = [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
    list(_widen_pool().map(lambda ab: np.copyto(out[ab[0]:ab[1]], half[ab[0]:ab[1]]), parts))
    return out


@functools.cache
def _widen_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(WIDEN_THREADS, thread_name_prefix="hybridembed-widen")


def pad_batch(ids: Sequence[Sequence[int]], batch: list[int], pad_id: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Input ids and attention mask of ``ids[i] for i in batch``, padded to the longest."""
    longest = max(len(ids[i]) for i in batch)
    input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), longest), dtype=np.int64)
    for r, i in enumerate(batch):
        input_ids[r, :len(ids[i])] = ids[i]
        mask[r, :len(ids[i])] = 1
    return input_ids, mask


def finite_rows(out: RuntimeOutput, vectors: np.ndarray | None, lengths: list[int]
                ) -> np.ndarray:
    """``(rows,)`` bool: whether every output of each text of a padded batch is finite,
    looking only at its own ``lengths[r]`` tokens (padding may hold anything). Learned
    sparse needs this check here: its extraction keeps weights > 0, which silently drops
    NaN instead of reporting it."""
    width = out.token_weights.shape[1] if out.token_weights is not None else (
        vectors.shape[1] if vectors is not None else 0)
    ok = np.ones(len(lengths), dtype=bool)
    if out.dense is not None:
        ok &= np.isfinite(out.dense).all(axis=1)
    if out.token_states is not None:
        real = np.arange(out.token_states.shape[1]) < np.asarray(lengths)[:, None]
        ok &= (np.isfinite(out.token_states).all(axis=2) | ~real).all(axis=1)
    padding = np.arange(width) >= np.asarray(lengths)[:, None]
    if out.token_weights is not None:
        weights = out.token_weights.reshape(len(lengths), width)
        ok &= (np.isfinite(weights) | padding).all(axis=1)
    if out.vocab_weights is not None:  # SPLADE: one weight per vocabulary id
        ok &= np.isfinite(out.vocab_weights).all(axis=1)
    if vectors is not None:
        # token_vectors start after the first token: row r keeps positions < lengths[r] - 1,
        # or, with a token_mask (ColBERT layouts), the positions it marks
        beyond = (~out.token_mask[:, :vectors.shape[1]] if out.token_mask is not None else
                  np.arange(vectors.shape[1]) >= np.asarray(lengths)[:, None] - 1)
        ok &= (np.isfinite(vectors).all(axis=2) | beyond).all(axis=1)
    return ok


def fill_rows(rows: list[RawRow], batch: list[int], lengths: list[int], input_ids: np.ndarray,
               out: RuntimeOutput, special_ids: np.ndarray) -> None:
    """Per-text results of one padded batch: row ``r`` of the outputs is text
    ``batch[r]``, ``lengths[r]`` tokens long before padding."""
    sparse = sparse_rows(input_ids, out, lengths, special_ids)
    vectors = out.token_vectors
    if vectors is not None and vectors.dtype != np.float32:  # sent in half precision
        vectors = widen(vectors)  # one array per batch; rows are views into it
    finite = finite_rows(out, vectors, lengths)
    for r, (i, n) in enumerate(zip(batch, lengths, strict=True)):
        row = rows[i]
        row.finite = bool(finite[r])
        if out.dense is not None:
            row.dense = out.dense[r]
        if sparse is not None:
            row.sparse = sparse[r]
        if vectors is not None:
            row.multivector = multivector_row(vectors, out.token_mask, r, n)
        if out.token_states is not None:
            row.states = out.token_states[r, :n]
            if out.token_weights is not None:
                row.weights = out.token_weights.reshape(len(lengths), -1)[r, :n]
