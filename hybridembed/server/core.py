"""What every protocol route shares: the loaded model, the batcher, admission checks
(input count, per-text token limit, token counting) and waiting with a timeout while
watching for the client to leave. Routes only translate their wire format. Each stage
of an embedding request is timed on its :class:`~.metrics.StageClock`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..config import Settings
from ..errors import (
    InputTooLongError,
    NonFiniteOutputError,
    OverloadedError,
    RequestTimeoutError,
)
from ..service.batcher import DynamicBatcher
from ..types import EmbedRequest, EmbedResult, Usage
from .errors import ApiError
from .metrics import CLOCK, Metrics, StageClock, lap

log = logging.getLogger(__name__)
# Texts per part of a large request in the queue, at least: a part is about four batches
# of the longest texts (64 texts at MiniLM's CPU budget, 2,048 at the CUDA one), so two
# parts in flight keep the device busy while memory stays bounded, and each part finishes
# within seconds on a CPU (the request timeout restarts whenever one does).
PART_TEXTS = 64
PART_TEXTS_MAX = 4_096
# Inputs per request by protocol when --max-inputs is not set (None: no cap).
PROTOCOL_INPUT_LIMITS = {"openai": 2048}


@dataclass
class ServerCore:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    embedder: object | None = None
    batcher: DynamicBatcher | None = None
    started: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    load_error: str | None = None
    _store: object | None = None

    async def start(self, embedder=None) -> None:
        """Load the model (off the event loop) unless one is given, then start batching."""
        began = time.perf_counter()
        try:
            if embedder is None:
                from ..service import Embedder

                embedder = await asyncio.to_thread(Embedder, **self.settings.embedder_options())
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error)
            return
        self.load_seconds = time.perf_counter() - began
        s = self.settings
        # On a multi-core CPU, one batch per core with one compute thread each (see the
        # batcher); elsewhere one batch at a time with the runtime's own threads.
        lanes = getattr(embedder, "parallel_forwards", 1)
        batcher = DynamicBatcher(
            embedder, max_batch_tokens=embedder.max_batch_tokens,
            max_batch_requests=s.max_batch_requests or None,
            max_queued_texts=s.max_queued_requests, max_queued_tokens=s.max_queued_tokens or None,
            lanes=lanes, threads=1 if lanes > 1 else None, on_batch=self.metrics.record_batch)
        await batcher.start()
        self.embedder, self.batcher = embedder, batcher

    async def stop(self) -> None:
        if self.batcher:
            await self.batcher.stop()
        if self._store is not None:
            self._store.close()

    def store(self):
        """The configured vector store, opened on first use with the served model."""
        if self._store is None:
            from ..stores import open_store

            self._store = open_store(self.ready(), **self.settings.store_options())
        return self._store

    # -- checks ---------------------------------------------------------------------------
    def ready(self):
        if self.embedder is None or self.batcher is None:
            why = f"model failed to load: {self.load_error}" if self.load_error else "model loading"
            raise ApiError(503, why, "not_ready", retry_after=None if self.load_error else 2)
        return self.embedder

    def model_names(self) -> set[str]:
        emb = self.ready()
        names = {emb.spec.name, self.settings.served_model_name}
        if emb.spec.hf_id:
            names |= {emb.spec.hf_id, emb.spec.hf_id.rsplit("/", 1)[-1]}
        names.discard("")
        return names | {n + ":latest" for n in names}

    def check_model(self, name: str | None) -> None:
        if name in (None, ""):
            return
        if name not in self.model_names():
            raise ApiError(404, f"model {name!r} is not served here; this server serves "
                           f"{self.ready().model!r} (also known as "
                           f"{', '.join(sorted(self.model_names() - {self.ready().model}))})",
                           "not_found", "model")

    def input_limit(self, protocol: str) -> int | None:
        """Inputs one request may hold: ``--max-inputs`` if set, else the protocol's own
        default (OpenAI caps at 2048 as OpenAI does; Ollama, TEI and native have none:
        a whole corpus in one request is split into parts internally)."""
        if self.settings.max_inputs:
            return self.settings.max_inputs
        return PROTOCOL_INPUT_LIMITS.get(protocol)

    def check_inputs(self, texts, protocol: str = "native") -> None:
        """Admission limits of this server (not validity): at least one input, at most
        :meth:`input_limit`."""
        if not texts:
            raise ApiError(400, "input is empty; send at least one text", "empty", "input")
        limit = self.input_limit(protocol)
        if limit is not None and len(texts) > limit:
            # OpenAI answers its own 2048 cap with a 400; a server-set cap is a 413.
            status = 413 if self.settings.max_inputs else 400
            raise ApiError(status, f"{len(texts)} inputs in one request; the limit is {limit}",
                           "too_large" if status == 413 else "invalid_request", "input")

    async def count_tokens(self, request: EmbedRequest) -> int:
        """Tokens the request will occupy (each text at most the model's limit), for
        admission and batch packing; whether a text may be cut is the Embedder's call."""
        emb = self.ready()
        strings = [t for t in request.texts if isinstance(t, str)]  # checked already
        lengths = [len(t) for t in request.texts if not isinstance(t, str)]  # token ids
        if len(strings) > 64:
            lengths += await asyncio.to_thread(emb.tokenizer.lengths, strings)
        else:
            lengths += emb.tokenizer.lengths(strings)
        limit = emb.max_length
        return sum(min(n, limit) for n in lengths)

    # -- the one embedding path -----------------------------------------------------------
    def announce(self, clock: StageClock) -> None:
        """The edge received a request that may become an embedding: batches about to
        start wait for it to be queued (see :meth:`DynamicBatcher.expect`)."""
        if self.batcher is not None and clock.announced is None:
            self.batcher.expect()
            clock.announced = self.batcher

    @staticmethod
    def arrived(clock: StageClock | None) -> None:
        """The announced request was queued, refused or answered: stop waiting for it."""
        if clock is not None and clock.announced is not None:
            clock.announced.arrived()
            clock.announced = None

    def request(self, texts, **options) -> EmbedRequest:
        """The request value for ``texts`` and ``options``, checked by
        :meth:`Embedder.request` (its errors pass through); times parse and validate."""
        emb = self.ready()
        lap("parse")
        embed = emb.request(texts, **options)
        lap("validate")
        return embed

    async def embed(self, request, embed: EmbedRequest, protocol: str = "native") -> EmbedResult:
        """Queue a request value built by :meth:`Embedder.request` (validated there, not
        here) and wait for it while watching whether the HTTP client (``request``) leaves.

        A request of more than :meth:`part_texts` texts (a whole corpus, as
        langchain-ollama sends) goes through the queue in parts, at most two in flight, so
        memory stays bounded and other clients' requests interleave. Only the first part
        can be refused as overload (429); later parts wait for room. The request timeout
        bounds waiting without progress: it restarts whenever a part completes. The stage
        clock gets the first part's queue time and the parts' inference times summed."""
        self.ready()
        clock = CLOCK.get()
        try:
            self.check_inputs(embed.texts, protocol)
        except ApiError:
            self.arrived(clock)
            raise
        watch = asyncio.ensure_future(_client_left(request)) if request is not None else None
        size = self.part_texts()
        parts = [EmbedRequest(embed.texts[a:a + size], embed.options)
                 for a in range(0, len(embed), size)]
        stamps: list[dict[str, float]] = [{} for _ in parts]
        pending: list[asyncio.Future] = []
        results: list[EmbedResult] = []
        try:
            for k, part in enumerate(parts):
                pending.append(asyncio.ensure_future(self._submit(part, k == 0, stamps[k])))
                if len(pending) >= 2 or k == len(parts) - 1:
                    while len(pending) > (0 if k == len(parts) - 1 else 1):
                        start = len(results) * size
                        results.append(await self._wait(pending.pop(0), watch, start))
        finally:
            if watch:
                watch.cancel()
            for job in pending:
                job.cancel()
        if clock is not None and all("finished" in s for s in stamps):
            clock.seconds["queue"] = stamps[0]["queue"]
            clock.seconds["inference"] = sum(s["inference"] for s in stamps)
            clock.last = stamps[-1]["finished"]
        return results[0] if len(results) == 1 else concat_results(results)

    def part_texts(self) -> int:
        """Texts per queue part of a large request (see :data:`PART_TEXTS`)."""
        emb = self.ready()
        return max(PART_TEXTS, min(PART_TEXTS_MAX, 4 * emb.max_batch_tokens // emb.max_length))

    async def _submit(self, part: EmbedRequest, first: bool, stamps: dict[str, float]
                      ) -> EmbedResult:
        clock = CLOCK.get()  # the request's (a task starts with a copy of the context)
        try:
            tokens = await self.count_tokens(part)
            if first:
                lap("tokenize")
            while True:
                try:
                    job = self.batcher.enqueue(part, tokens, stamps)
                    break
                except OverloadedError as exc:
                    if first:
                        raise
                    await asyncio.sleep(min(0.05, exc.retry_after))
        finally:
            if first:  # queued (or refused) in the same step: no lane waits for it
                self.arrived(clock)
        try:
            return await job
        finally:
            if not job.done():
                job.cancel()

    async def _wait(self, job: asyncio.Future, watch: asyncio.Future | None, start: int
                    ) -> EmbedResult:
        """The result of one part, or: 499 if the client left, 503 after the request
        timeout without this part completing; errors about texts name whole-request
        indexes (``start`` is the part's first)."""
        waiting = {job} | ({watch} if watch else set())
        done, _ = await asyncio.wait(waiting, timeout=self.settings.request_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if job in done:
            try:
                return job.result()
            except (InputTooLongError, NonFiniteOutputError) as exc:
                raise offset_indices(exc, start) from None
        job.cancel()
        if watch is not None and watch in done:
            raise ApiError(499, "client closed the request", "invalid_request")
        raise RequestTimeoutError(f"request waited more than {self.settings.request_timeout:g} s "
                                  "without progress and was dropped; retry later or raise "
                                  "the timeout")


def concat_results(results: list[EmbedResult]) -> EmbedResult:
    """One result of consecutive parts' results, rows in order."""
    first = results[0]

    def joined(rows):
        return None if rows is None else [r for res in results for r in getattr(res, rows)]

    return EmbedResult(
        model=first.model,
        dense=None if first.dense is None else np.concatenate([r.dense for r in results]),
        sparse=joined("sparse") if first.sparse is not None else None,
        multivector=joined("multivector") if first.multivector is not None else None,
        usage=Usage([t for r in results for t in r.usage.tokens]))


def offset_indices(exc: InputTooLongError | NonFiniteOutputError, start: int) -> Exception:
    """``exc`` of a part starting at text ``start``, its indexes made the request's."""
    if not start:
        return exc
    if isinstance(exc, InputTooLongError):
        return InputTooLongError({i + start: n for i, n in exc.too_long.items()}, exc.limit)
    return NonFiniteOutputError([i + start for i in exc.indices])


async def _client_left(request) -> None:
    """Returns when the client disconnects (the body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
