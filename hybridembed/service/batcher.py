"""Dynamic batching for concurrent callers (no HTTP here).

Every request enters one queue. Admission counts each *text* and its tokens, whether it
came alone or in a list, and refuses at once (:class:`OverloadedError`) past the limits.
A worker takes queued requests with the same options up to a token budget, drops those
whose caller went away, and runs :meth:`Embedder.embed` off the event loop. Up to
``prefetch + 1`` batches are in flight, so the next batch is tokenised while the previous
one holds the model. A failed batch fails every request in it: none is left waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputTooLongError, NonFiniteOutputError, OverloadedError
from ..types import EmbedRequest, EmbedResult

log = logging.getLogger(__name__)


@dataclass
class _Job:
    request: EmbedRequest
    tokens: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchRecord:
    """What a batch looked like, for metrics."""

    texts: int
    tokens: int
    requests: int
    seconds: float


class DynamicBatcher:
    def __init__(self, embedder, *, max_batch_tokens: int, max_batch_requests: int | None = None,
                 max_queued_texts: int = 4096, max_queued_tokens: int | None = None,
                 prefetch: int = 0, settle_ms: float = 2.0, max_settle_ms: float = 20.0,
                 on_batch=None):
        self.embedder = embedder
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_queued_texts = max_queued_texts
        self.max_queued_tokens = max_queued_tokens
        self.on_batch = on_batch
        self.settle = settle_ms / 1000
        self.max_settle = max_settle_ms / 1000
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._queued_tokens = 0
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._pool = ThreadPoolExecutor(max_workers=prefetch + 1, thread_name_prefix="embed")
        self._prefetch = prefetch
        self._worker: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self._prefetch + 1)
        self._worker = asyncio.create_task(self._work(), name="hybridembed-batcher")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, *self._running, return_exceptions=True)
        self._fail_all(RuntimeError("the server is shutting down"))
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, request: EmbedRequest, tokens: int) -> EmbedResult:
        """Queue a validated ``request`` (``tokens``: its count after truncation, for
        admission and packing) and wait for its result. Cancelling the wait drops the
        texts before they are computed."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batcher is not running")
        n = len(request)
        if (self._queued_texts + n > self.max_queued_texts or (
                self.max_queued_tokens and self._queued_tokens + tokens > self.max_queued_tokens)):
            raise OverloadedError(
                f"queue full ({self._queued_texts} texts / {self._queued_tokens} tokens queued, "
                f"limits {self.max_queued_texts} texts"
                + (f" / {self.max_queued_tokens} tokens" if self.max_queued_tokens else "")
                + "); retry shortly")
        job = _Job(request, tokens, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._queued_texts += n
        self._queued_tokens += tokens
        self._wakeup.set()
        try:
            return await job.future
        finally:
            if not job.future.done():
                job.future.cancel()

    # -- worker ---------------------------------------------------------------------------
    def _take(self, job: _Job) -> None:
        self._queued_texts -= len(job.request)
        self._queued_tokens -= job.tokens

    def _next_batch(self) -> list[_Job]:
        """The oldest live request plus queued requests with the same options, up to the
        token budget and request cap. Cancelled requests are dropped here."""
        batch: list[_Job] = []
        tokens = 0
        keep: deque[_Job] = deque()
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():  # caller went away or timed out
                self._take(job)
                continue
            fits = (not batch or (job.request.options == batch[0].request.options
                                  and tokens + job.tokens <= self.max_batch_tokens
                                  and (self.max_batch_requests is None
                                       or len(batch) < self.max_batch_requests)))
            if fits:
                self._take(job)
                batch.append(job)
                tokens += job.tokens
            else:
                keep.append(job)
                if tokens >= self.max_batch_tokens:
                    break
        keep.extend(self._queue)
        self._queue = keep
        return batch

    async def _work(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._slots.acquire()
            await self._settle()
            batch = self._next_batch()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _settle(self) -> None:
        """Let requests that arrived while the model was busy finish parsing and join the
        queue: wait while the queue keeps growing, ``settle`` at a time, ``max_settle`` at
        most. On a CPU the forward pass starves the event loop, so without this the next
        batch would hold only the few requests parsed so far."""
        deadline = time.perf_counter() + self.max_settle
        while time.perf_counter() < deadline:
            before = self._queued_texts
            await asyncio.sleep(self.settle)
            if self._queued_texts == before:
                return

    async def _run(self, batch: list[_Job]) -> None:
        try:
            texts = tuple(t for job in batch for t in job.request.texts)
            merged = EmbedRequest(texts, batch[0].request.options)  # parts already validated
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            try:
                result = await loop.run_in_executor(self._pool, self.embedder.run, merged)
                failed, failure = set(), None
            except (InputTooLongError, NonFiniteOutputError) as exc:
                # Some texts failed; the others were embedded. Each request gets its own
                # rows, or the error re-addressed to its own indexes: a bad text of one
                # client never fails the clients merged into the same batch.
                result, failed, failure = _spread(exc, len(texts)), _failed_of(exc), exc
            if self.on_batch:
                self.on_batch(BatchRecord(len(texts), result.usage.total_tokens, len(batch),
                                          time.perf_counter() - started))
            start = 0
            for job in batch:
                stop = start + len(job.request)
                mine = [i - start for i in sorted(failed) if start <= i < stop]
                if not job.future.done():
                    if mine:
                        job.future.set_exception(_readdressed(failure, mine, result, start,
                                                              stop))
                    else:
                        job.future.set_result(_slice(result, start, stop))
                start = stop
        except BaseException as exc:  # every waiting request gets an answer
            fail_batch(batch, exc, "batch")
        finally:
            self._slots.release()

    def _fail_all(self, exc: Exception) -> None:
        while self._queue:
            job = self._queue.popleft()
            self._take(job)
            if not job.future.done():
                job.future.set_exception(exc)


def fail_batch(batch, exc: BaseException, what: str) -> None:
    """Answer every still-waiting job of a failed ``batch`` with ``exc`` (cancellation
    becomes a RuntimeError for the callers), then re-raise it if it was not an Exception."""
    log.exception("%s of %d requests failed", what, len(batch))
    for job in batch:
        if not job.future.done():
            job.future.set_exception(exc if isinstance(exc, Exception)
                                     else RuntimeError("batch cancelled"))
    if not isinstance(exc, Exception):
        raise exc


def _failed_of(exc: InputTooLongError | NonFiniteOutputError) -> set[int]:
    return set(exc.too_long) if isinstance(exc, InputTooLongError) else set(exc.indices)


def _spread(exc: InputTooLongError | NonFiniteOutputError, n: int) -> EmbedResult:
    """The partial result of ``exc`` laid out over all ``n`` rows (failed rows empty), so
    each request's rows are a plain slice."""
    part: EmbedResult = exc.partial
    where = {i: r for r, i in enumerate(exc.partial_indices)}
    width = part.dense.shape[1] if part.dense is not None else 0
    dense = None
    if part.dense is not None:
        dense = np.zeros((n, width), np.float32)
        if where:
            dense[list(where)] = part.dense

    def pick(rows):
        return None if rows is None else [rows[where[i]] if i in where else None
                                          for i in range(n)]

    return EmbedResult(model=part.model, dense=dense, sparse=pick(part.sparse),
                       multivector=pick(part.multivector),
                       usage=part.usage.take(where.get(i) for i in range(n)))


def _readdressed(exc, mine: list[int], spread: EmbedResult, a: int, b: int) -> Exception:
    """``exc`` as one request of the batch (rows ``a:b``) would have seen it alone."""
    own = _slice(spread, a, b)
    ok = [i for i in range(b - a) if i not in set(mine)]
    partial = _slice_rows(own, ok)
    if isinstance(exc, InputTooLongError):
        return InputTooLongError({i: exc.too_long[i + a] for i in mine}, exc.limit, partial, ok)
    return NonFiniteOutputError(mine, partial, ok)


def _slice_rows(result: EmbedResult, rows: list[int]) -> EmbedResult:
    return EmbedResult(
        model=result.model,
        dense=None if result.dense is None else result.dense[rows],
        sparse=None if result.sparse is None else [result.sparse[i] for i in rows],
        multivector=None if result.multivector is None else [result.multivector[i] for i in rows],
        usage=result.usage.take(rows),
    )


def _slice(result: EmbedResult, a: int, b: int) -> EmbedResult:
    return EmbedResult(
        model=result.model,
        dense=None if result.dense is None else np.ascontiguousarray(result.dense[a:b]),
        sparse=None if result.sparse is None else result.sparse[a:b],
        multivector=None if result.multivector is None else result.multivector[a:b],
        usage=result.usage.take(range(a, b)),
    )
