"""Dynamic batching for concurrent callers (no HTTP here).

Every request enters one queue. Admission counts each *text* and its tokens, whether it
came alone or in a list, and refuses at once (:class:`OverloadedError`) past the limits.
A free *lane* takes the oldest live request and every queued request with the same options
after it, up to a token budget, drops those whose caller went away, and runs
:meth:`Embedder.run` off the event loop. A failed batch fails every request in it: none is
left waiting.

Lanes: ``lanes`` batches run at once, each with ``threads`` compute threads; a batch
taken when nothing else waits and nothing runs (or large enough for every lane) takes every
lane and runs with the embedder's own threads instead. On a CPU the
server runs one lane per core with one thread each: whole batches side by side use small
encoder matrices better than one batch split across cores (the in-process engine does the
same for large calls), and a lane that finishes picks the next batch at once instead of
waiting for the slowest half of a shared call. A compute thread per core also leaves the
operating system free to run the event loop between them; a pool of spinning threads
spanning every core starved it, so requests waited unparsed and batches stayed small.

Settling: before taking a batch, a lane waits (``settle_ms`` at a time, ``max_settle_ms``
at most) while requests the edge has received (``arriving()``) are still being parsed and
tokenised, unless a full batch is already queued. With nothing arriving, a request is
taken at once: a lone client never waits for company.

Inline: a batch that takes the whole machine while nothing else is queued, running or
arriving, and whose run is predicted (from the seconds per token of earlier such batches)
to end within ``inline_max_seconds``, runs on the event loop's own thread instead of a
worker thread. Nothing else could use that time (the batch holds every lane), and the
thread that parsed the request carries on hot, as an in-process caller does: handing a
lone batch to a worker thread and back cost a lone client 1.3 ms per request on the
2-core machine (docs/BENCHMARKS.md, issue 18), most of it Python run on a thread that had
been idle. The loop is held at most about that long, so other connections wait at most
that long to be read.

By length: given ``by_length`` (the embedder's cut of texts into batches, for a runtime
whose batches cost their padding: ONNX Runtime on a CPU), a lane does not take every
waiting request but those the cut puts in one batch with the oldest: texts of similar
lengths. The rest wait for the next lane, with the requests that arrive meanwhile, so each
cut is made over more texts than one lane's share. A server's clients send texts of every
length in any order, and a lane that took the whole queue ran it cut into short runs of
mixed lengths: padding, and more passes, each of which reads all the weights
(docs/BENCHMARKS.md, "Lanes that pick by length"). The oldest request is in every batch,
so none is passed over.

Unqueued: a caller on the event loop may go one step further with :meth:`run_now`: when
the batcher is idle, its request runs as such an inline batch at once, in the caller's own
step, without being queued, waking the worker task and waking the caller again: on a small
machine each of those steps is cold Python, and a lone client waits for all of them
(docs/BENCHMARKS.md, issue 18).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputTooLongError, NonFiniteOutputError, OverloadedError
from ..types import EmbedRequest, EmbedResult

log = logging.getLogger(__name__)
# How long a lone batch may hold the event loop (see "Inline" above): a short text through
# a small model on a CPU, any short batch on a GPU; never a large call on a CPU.
INLINE_MAX_SECONDS = 0.1
# Texts a lane picks from by length, oldest first: the cut runs on the event loop, and a
# larger pool saves little more padding (docs/BENCHMARKS.md, "Lanes that pick by length":
# 64 texts cut together cost +5.6% over no padding at all, 600 sorted +1.4%).
BY_LENGTH_POOL_TEXTS = 256


@dataclass
class _Job:
    request: EmbedRequest
    tokens: int
    future: asyncio.Future
    stamps: dict | None = None
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchRecord:
    """What a batch looked like, for metrics. ``tokens``: as embedded (after truncation);
    ``budget``: the batch token budget it was packed against; ``seconds``: its
    ``Embedder.run``."""

    texts: int
    tokens: int
    requests: int
    seconds: float
    budget: int = 0


class DynamicBatcher:
    """Merges concurrent :class:`EmbedRequest` values into batches for ``embedder.run``.

    ``max_batch_tokens``: tokens per batch (admission counts, see :meth:`submit`); a single
    request over it is a batch of its own. ``lanes``: batches run at once; ``threads``:
    compute threads each batch asks ``embedder.run`` for (``None``: the embedder's own).
    ``max_queued_texts`` / ``max_queued_tokens``: admission limits. ``on_batch`` receives a
    :class:`BatchRecord` after every batch, in the event loop's next step.
    ``inline_max_seconds``: the longest predicted run of a lone batch on the event loop's
    thread (0: never; see the module's text). ``by_length``: ``lengths -> batches`` (lists
    of positions into ``lengths``, as :meth:`Embedder.batch_cut`): take waiting requests
    by length (see the module's text); ``None``: in queue order."""

    def __init__(self, embedder, *, max_batch_tokens: int, max_batch_requests: int | None = None,
                 max_queued_texts: int = 4096, max_queued_tokens: int | None = None,
                 lanes: int = 1, threads: int | None = None, settle_ms: float = 1.0,
                 max_settle_ms: float = 20.0,
                 on_batch: Callable[[BatchRecord], None] | None = None,
                 inline_max_seconds: float = INLINE_MAX_SECONDS,
                 by_length: Callable[[list[int]], list[list[int]]] | None = None):
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.embedder = embedder
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_queued_texts = max_queued_texts
        self.max_queued_tokens = max_queued_tokens
        self.lanes = lanes
        self.threads = threads
        self.on_batch = on_batch
        self.settle = settle_ms / 1000
        self.max_settle = max_settle_ms / 1000
        self.inline_max_seconds = inline_max_seconds
        self.by_length = by_length
        self._seconds_per_token: float | None = None  # of whole-machine batches, smoothed
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._queued_tokens = 0
        self._expected = 0  # requests the edge announced (monotonic)
        self._arrived = 0  # of those, queued or given up (monotonic)
        self._wakeup: asyncio.Event | None = None
        self._free_lanes: asyncio.Semaphore | None = None
        self._pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="embed")
        self._worker: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._holding = False  # the worker holds a batch while it waits for lanes

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    def expect(self) -> None:
        """The edge received a request that may be submitted soon: a lane about to take a
        batch waits for it (at most ``max_settle_ms``). Pair every call with
        :meth:`arrived`."""
        self._expected += 1

    def arrived(self) -> None:
        """A request announced by :meth:`expect` was submitted, refused or abandoned."""
        self._arrived += 1

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._free_lanes = asyncio.Semaphore(self.lanes)
        self._worker = asyncio.create_task(self._work(), name="hybridembed-batcher")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, *self._running, return_exceptions=True)
        self._fail_all(RuntimeError("the server is shutting down"))
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, request: EmbedRequest, tokens: int, stamps: dict | None = None
                     ) -> EmbedResult:
        """Queue a validated ``request`` (``tokens``: its count after truncation, for
        admission and packing) and wait for its result. Cancelling the wait drops the
        texts before they are computed. With ``stamps`` given, its ``queue`` and
        ``inference`` entries are set to the seconds the request waited and its batch ran,
        and ``finished`` to the batch's end (``time.perf_counter``)."""
        future = self.enqueue(request, tokens, stamps)
        try:
            return await future
        finally:
            if not future.done():
                future.cancel()

    def enqueue(self, request: EmbedRequest, tokens: int, stamps: dict | None = None
                ) -> asyncio.Future:
        """:meth:`submit` without the wait: queue ``request`` now (or raise
        :class:`OverloadedError`) and return the future of its result; cancelling the
        future drops the texts before they are computed."""
        self._admit(request, tokens)
        job = _Job(request, tokens, asyncio.get_running_loop().create_future(), stamps)
        self._queue.append(job)
        self._queued_texts += len(request)
        self._queued_tokens += tokens
        self._wakeup.set()
        return job.future

    def idle(self, announced: int = 0) -> bool:
        """Whether nothing is queued, held or running and no request the edge announced
        is still arriving, but for ``announced`` of them (the caller's own, already counted
        by :meth:`expect`)."""
        # A finished batch task leaves the running set a loop step after its callers
        # resumed (its done callback), with its lanes already released.
        return (not self._queue and not self._holding
                and all(task.done() for task in self._running)
                and self._arrived + announced >= self._expected)

    def run_now(self, request: EmbedRequest, tokens: int, stamps: dict | None = None, *,
                announced: int = 0) -> EmbedResult | None:
        """Run ``request`` at once on the calling (event loop's) thread when the batcher is
        :meth:`idle` (``announced``: 1 if the caller's request was announced and has not
        arrived) and earlier whole-machine batches predict it ends within
        :attr:`inline_max_seconds`: its result, or its error raised, exactly as
        :meth:`submit` would give them (admission limits included; ``stamps`` filled the
        same way). ``None``: not now; :meth:`submit` it instead. The caller still calls
        :meth:`arrived` for an announced request."""
        job = _Job(request, tokens, asyncio.get_running_loop().create_future(), stamps)
        if not (self.idle(announced) and self._short([job])):
            return None
        self._admit(request, tokens)
        self._run_inline([job], self.lanes)
        return job.future.result()

    def _admit(self, request: EmbedRequest, tokens: int) -> None:
        """Raise what admission refuses: the batcher not running, or
        :class:`OverloadedError` past the queue's limits."""
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

    # -- worker ---------------------------------------------------------------------------
    def _take(self, job: _Job) -> None:
        self._queued_texts -= len(job.request)
        self._queued_tokens -= job.tokens

    def _next_batch(self) -> list[_Job]:
        """The next batch off the queue: :meth:`_next_by_length` with ``by_length``, else
        the oldest live request plus queued requests with the same options, in queue
        order, up to the token budget and request cap. Cancelled requests are dropped
        here."""
        if self.by_length:
            return self._next_by_length()
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

    def _next_by_length(self) -> list[_Job]:
        """The requests that ``by_length`` cuts into one batch with the oldest live request,
        among the queued ones with its options (the oldest :data:`BY_LENGTH_POOL_TEXTS`
        texts; each text taken as its request's mean length), in queue order, within the
        token budget and request cap, the oldest always; a request with a text in that
        batch comes whole. Cancelled requests are dropped here."""
        live: deque[_Job] = deque()
        for job in self._queue:
            if job.future.done():  # caller went away or timed out
                self._take(job)
            else:
                live.append(job)
        self._queue = live
        if not live:
            return []
        options = live[0].request.options
        pool: list[_Job] = []
        lengths: list[int] = []
        owner: list[int] = []
        for job in live:
            if job.request.options != options:
                continue
            n = len(job.request)
            if pool and len(lengths) + n > BY_LENGTH_POOL_TEXTS:
                break
            lengths += [math.ceil(job.tokens / max(1, n))] * n  # the cut counts 0 as 1
            owner += [len(pool)] * n
            pool.append(job)
        # the oldest request goes in any case (one without texts has no position)
        chosen = next(({owner[i] for i in batch} for batch in self.by_length(lengths)
                       if any(owner[i] == 0 for i in batch)), set()) | {0}
        batch: list[_Job] = []
        tokens = 0
        for k in sorted(chosen):  # queue order, the oldest first
            job = pool[k]
            if batch and (tokens + job.tokens > self.max_batch_tokens
                          or len(batch) == self.max_batch_requests):
                continue
            batch.append(job)
            tokens += job.tokens
        taken = {id(job) for job in batch}
        self._queue = deque(job for job in live if id(job) not in taken)
        for job in batch:
            self._take(job)
        return batch

    async def _work(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._free_lanes.acquire()
            await self._settle()
            batch = self._next_batch()
            if not batch:
                self._free_lanes.release()
                continue
            lanes = 1
            if self.lanes > 1 and not self._queue and (not self._running or sum(
                    job.tokens for job in batch) >= self.lanes * self.max_batch_tokens):
                # Nothing else waiting, and nothing else running or a call big enough for
                # every lane: it gets the whole machine, with the embedder's own threads
                # (a lone client's text as fast as in-process; a large call's batches
                # spread over the cores by the embedder).
                self._holding = True  # taken off the queue, waiting for lanes
                try:
                    for _ in range(self.lanes - 1):
                        await self._free_lanes.acquire()
                finally:
                    self._holding = False
                lanes = self.lanes
            if lanes == self.lanes and self._inline(batch):
                try:
                    self._run_inline(batch, lanes)
                finally:
                    for _ in range(lanes):
                        self._free_lanes.release()
                continue
            task = asyncio.create_task(self._run(batch, lanes))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _settle(self) -> None:
        """Wait, ``settle`` at a time and ``max_settle`` at most, until the requests the
        edge has received so far are queued (while a batch runs on a CPU they wait to be
        parsed), unless a full batch is queued already. Without announcements from the
        edge, nothing is waited for."""
        target = self._expected
        deadline = time.perf_counter() + self.max_settle
        while (self._arrived < target and self._queued_tokens < self.max_batch_tokens
               and time.perf_counter() < deadline):
            await asyncio.sleep(self.settle)

    def _inline(self, batch: list[_Job]) -> bool:
        """Whether ``batch``, which has every lane, runs on the event loop's thread: only
        when nothing else is queued, running or announced, and earlier whole-machine
        batches predict it ends within :attr:`inline_max_seconds`."""
        return self.idle() and self._short(batch)

    def _short(self, batch: list[_Job]) -> bool:
        """Whether earlier whole-machine batches predict ``batch`` ends within
        :attr:`inline_max_seconds` (never before one has been timed)."""
        return (self._seconds_per_token is not None
                and self._seconds_per_token * sum(job.tokens for job in batch)
                <= self.inline_max_seconds)

    def _run_inline(self, batch: list[_Job], lanes: int) -> None:
        """Compute and deliver ``batch`` on this thread (the caller holds or stands in for
        ``lanes``)."""
        try:
            self._deliver(batch, lanes, self._compute(batch, lanes))
        except BaseException as exc:  # every waiting request gets an answer
            fail_batch(batch, exc, "batch")

    async def _run(self, batch: list[_Job], lanes: int = 1) -> None:
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._compute, batch, lanes)
            self._deliver(batch, lanes, outcome)
        except BaseException as exc:  # every waiting request gets an answer
            fail_batch(batch, exc, "batch")
        finally:
            for _ in range(lanes):
                self._free_lanes.release()

    def _compute(self, batch: list[_Job], lanes: int) -> tuple:
        """Run ``batch`` as one request (on a worker thread, or inline): ``(result, failed
        row indexes, their error or None, started, finished)``."""
        texts = tuple(t for job in batch for t in job.request.texts)
        merged = EmbedRequest(texts, batch[0].request.options)  # parts already validated
        started = time.perf_counter()
        try:
            if lanes == 1 and self.threads is not None:
                result = self.embedder.run(merged, threads=self.threads)
            else:
                result = self.embedder.run(merged)
            return result, set(), None, started, time.perf_counter()
        except (InputTooLongError, NonFiniteOutputError) as exc:
            # Some texts failed; the others were embedded. Each request gets its own rows,
            # or the error re-addressed to its own indexes: a bad text of one client never
            # fails the clients merged into the same batch.
            return (_spread(exc, len(texts)), _failed_of(exc), exc, started,
                    time.perf_counter())

    def _deliver(self, batch: list[_Job], lanes: int, outcome: tuple) -> None:
        """Hand each request of ``batch`` its rows (or its error) from ``outcome`` (see
        :meth:`_compute`), on the event loop."""
        result, failed, failure, started, finished = outcome
        self._record(batch, lanes, finished - started, sum(len(job.request) for job in batch),
                     result.usage.total_tokens, self.max_batch_tokens)
        start = 0
        for job in batch:
            stop = start + len(job.request)
            mine = [i - start for i in sorted(failed) if start <= i < stop]
            if job.stamps is not None:
                job.stamps.update(queue=max(0.0, started - job.enqueued),
                                  inference=finished - started, finished=finished)
            if not job.future.done():
                if mine:
                    job.future.set_exception(_readdressed(failure, mine, result, start, stop))
                else:
                    job.future.set_result(_slice(result, start, stop))
            start = stop

    def _record(self, batch: list[_Job], lanes: int, seconds: float, texts: int,
                tokens: int, budget: int = 0) -> None:
        """After a batch, in the loop's next step (once the answers of a batch run in its
        caller's step, :meth:`run_now`, are written): learn its speed (:meth:`_timed`)
        and hand its :class:`BatchRecord` to ``on_batch``. Neither is part of a lone
        request's wait; the next batch is decided in a later step."""
        asyncio.get_running_loop().call_soon(self._recorded, batch, lanes, seconds,
                                             BatchRecord(texts, tokens, len(batch), seconds,
                                                         budget))

    def _recorded(self, batch: list[_Job], lanes: int, seconds: float,
                  record: BatchRecord) -> None:
        self._timed(batch, lanes, seconds)
        if self.on_batch:
            self.on_batch(record)

    def _timed(self, batch: list[_Job], lanes: int, seconds: float) -> None:
        """Learn the seconds per (admission) token of whole-machine batches, for
        :meth:`_inline`: a moving average, so one slow batch moves it by a third."""
        if lanes != self.lanes:
            return
        rate = seconds / max(1, sum(job.tokens for job in batch))
        last = self._seconds_per_token
        self._seconds_per_token = rate if last is None else last + (rate - last) / 3

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
    if a == 0 and b == len(result.usage.tokens):  # the batch was this request alone
        return result
    return EmbedResult(
        model=result.model,
        dense=None if result.dense is None else np.ascontiguousarray(result.dense[a:b]),
        sparse=None if result.sparse is None else result.sparse[a:b],
        multivector=None if result.multivector is None else result.multivector[a:b],
        usage=result.usage.take(range(a, b)),
    )
