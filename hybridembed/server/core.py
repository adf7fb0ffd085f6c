"""What every protocol route shares: the models (a :class:`ModelRegistry`), admission
checks (input count, per-text token limit, token counting) and waiting with a timeout while
watching for the client to leave, for embedding and for reranking. Routes only translate
their wire format. Each stage of an embedding request is timed on its
:class:`~.metrics.StageClock`."""

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
from ..types import EmbedRequest, EmbedResult, RerankRequest, RerankResult, Usage
from .errors import ApiError
from .metrics import CLOCK, Metrics, StageClock, lap

log = logging.getLogger(__name__)
# Requests of more strings are counted on a worker thread, so the event loop never holds
# a large tokenisation.
COUNT_ON_LOOP = 64
# Event loop iterations a lone request lets pass before it runs unqueued (see _now).
IDLE_CHECK_STEPS = 2
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
    models: object | None = None  # the ModelRegistry (server/models.py)
    started: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    load_error: str | None = None
    gc_freeze: bool = False  # see ModelRegistry
    _store: object | None = None

    async def start(self, embedder=None, models: dict | None = None) -> None:
        """Load the configured models (off the event loop; ``embedder`` is the first one,
        already loaded, and ``models`` more of them by name), then start batching. The
        default embedding model becomes :attr:`embedder`."""
        from .models import ModelConfig, ModelRegistry, configs_of

        began = time.perf_counter()
        try:
            configs = configs_of(self.settings, embedder)
            configs += [ModelConfig(n, n) for n in (models or {})
                        if n not in {c.name for c in configs}]
            preloaded = {**(models or {}), **({configs[0].name: embedder} if embedder else {})}
            self.models = ModelRegistry(self.settings, configs, preloaded,
                                        on_batch=self.metrics.record_batch,
                                        gc_freeze=self.gc_freeze)
            await self.models.start()
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("models failed to load: %s", self.load_error)
            return
        self.load_seconds = time.perf_counter() - began
        default = self.models.default("embed")
        if default is not None and default.loaded:
            self.embedder, self.batcher = default.embedder, default.batcher
        elif default is not None:
            self.load_error = default.error

    async def stop(self) -> None:
        if self.models is not None:
            await self.models.stop()
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
        """The default embedding model, loaded (503 while loading or failed; 400 when the
        server serves no embedding model)."""
        if self.embedder is None and self.models is not None and self.models.default(
                "embed") is None:
            raise ApiError(404, "this server serves no embedding model; models: "
                           f"{', '.join(self.models.slots)}", "not_found", "model")
        if self.embedder is None or self.batcher is None:
            why = f"model failed to load: {self.load_error}" if self.load_error else "model loading"
            raise ApiError(503, why, "not_ready", retry_after=None if self.load_error else 2)
        return self.embedder

    def input_limit(self, protocol: str) -> int | None:
        """Inputs one request may hold: ``--max-inputs`` if set, else the protocol's own
        default (OpenAI caps at 2048 as OpenAI does; Ollama, TEI and native have none:
        a whole corpus in one request is split into parts internally)."""
        if self.settings.max_inputs:
            return self.settings.max_inputs
        return PROTOCOL_INPUT_LIMITS.get(protocol)

    def check_inputs(self, texts, protocol: str = "native", field: str = "input") -> None:
        """Admission limits of this server (not validity): at least one input, at most
        :meth:`input_limit`; ``field`` names the request field in the error."""
        if not texts:
            raise ApiError(400, f"{field} is empty; send at least one text", "empty", field)
        limit = self.input_limit(protocol)
        if limit is not None and len(texts) > limit:
            # OpenAI answers its own 2048 cap with a 400; a server-set cap is a 413.
            status = 413 if self.settings.max_inputs else 400
            raise ApiError(status, f"{len(texts)} {field} in one request; the limit is {limit}",
                           "too_large" if status == 413 else "invalid_request", field)

    async def count_tokens(self, request: EmbedRequest, emb=None) -> int:
        """Tokens the request will occupy (each text with the model's prompt, at most the
        model's limit), for admission and batch packing; whether a text may be cut is the
        Embedder's call.
        ``emb``: the request's model (default: the default embedding model). Strings are
        counted on the tokenizer's private copy (:meth:`TextTokenizer.lengths`): no lock,
        so counting on the event loop never waits for a batch being tokenised."""
        emb = emb or self.ready()
        tokens = self.count_now(request, emb)
        if tokens is None:  # many texts: counted off the event loop
            tokens = _admitted(request, emb, await asyncio.to_thread(emb.tokenizer.lengths,
                                                                      _strings(request, emb)))
        return tokens

    def count_now(self, request: EmbedRequest, emb=None) -> int | None:
        """:meth:`count_tokens` on this thread, for requests of at most
        :data:`COUNT_ON_LOOP` strings; ``None`` for larger ones."""
        emb = emb or self.ready()
        if sum(isinstance(t, str) for t in request.texts) > COUNT_ON_LOOP:
            return None
        return _admitted(request, emb, emb.tokenizer.lengths(_strings(request, emb)))

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

    @staticmethod
    def request(emb, texts, **options) -> EmbedRequest:
        """The request value for ``texts`` and ``options`` on the embedder ``emb``,
        checked by :meth:`Embedder.request` (its errors pass through); times parse and
        validate."""
        lap("parse")
        embed = emb.request(texts, **options)
        lap("validate")
        return embed

    async def embed(self, request, embed: EmbedRequest, protocol: str = "native", *,
                    slot=None) -> EmbedResult:
        """Queue a request value built by :meth:`Embedder.request` (validated there, not
        here) on the batcher of ``slot`` (a :class:`~hybridembed.server.models.ModelSlot`;
        default: the default embedding model's) and wait for it while watching whether the
        HTTP client (``request``) leaves.

        A request of more than :meth:`part_texts` texts (a whole corpus, as
        langchain-ollama sends) goes through the queue in parts, at most two in flight, so
        memory stays bounded and other clients' requests interleave. Only the first part
        can be refused as overload (429); later parts wait for room. The request timeout
        bounds waiting without progress: it restarts whenever a part completes. The stage
        clock gets the first part's queue time and the parts' inference times summed. A
        one-part request of at most :data:`COUNT_ON_LOOP` strings to an idle batcher, its
        run predicted short, runs at once, unqueued (:meth:`_now`)."""
        clock = CLOCK.get()
        try:
            if slot is None:
                self.ready()
            self.check_inputs(embed.texts, protocol)
        except ApiError:
            self.arrived(clock)
            raise
        size = self.part_texts(slot.embedder if slot else None)
        tokens = None
        if len(embed) <= size:
            result, tokens = await self._now(embed, slot, clock)
            if result is not None:
                return result
        watch = asyncio.ensure_future(_client_left(request)) if request is not None else None
        parts = [EmbedRequest(embed.texts[a:a + size], embed.options)
                 for a in range(0, len(embed), size)]
        stamps: list[dict[str, float]] = [{} for _ in parts]
        pending: list[asyncio.Future] = []
        results: list[EmbedResult] = []
        try:
            for k, part in enumerate(parts):
                pending.append(asyncio.ensure_future(
                    self._submit(part, k == 0, stamps[k], slot, tokens if k == 0 else None)))
                if len(pending) >= 2 or k == len(parts) - 1:
                    while len(pending) > (0 if k == len(parts) - 1 else 1):
                        start = len(results) * size
                        results.append(await self._wait(pending.pop(0), watch, start))
        finally:
            if watch:
                watch.cancel()
            for job in pending:
                job.cancel()
        _clock_parts(clock, stamps)
        return results[0] if len(results) == 1 else concat_results(results)

    async def _now(self, embed: EmbedRequest, slot, clock: StageClock | None
                   ) -> tuple[EmbedResult | None, int | None]:
        """A one-part request run at once in the caller's task when its batcher is idle
        (:meth:`DynamicBatcher.run_now`): ``(result, tokens)``; ``(None, tokens)`` when it
        must be queued (``tokens``: its count if already taken, else ``None``). Overload
        and the request's own errors are raised as the queue would raise them."""
        batcher = slot.batcher if slot else self.batcher
        announced = int(clock is not None and clock.announced is batcher)
        # A few loop iterations first: one reads the sockets that have data (the other
        # clients of a burst), the next runs their requests' tasks, which announce them;
        # a batcher that sees them coming queues this request to be batched with theirs.
        for _ in range(IDLE_CHECK_STEPS):
            if not batcher.idle(announced):
                return None, None
            await asyncio.sleep(0)
        tokens = self.count_now(embed, slot.embedder if slot else None)
        if tokens is None:
            return None, None
        lap("tokenize")
        stamps: dict[str, float] = {}
        try:
            result = batcher.run_now(embed, tokens, stamps, announced=announced)
        except BaseException:
            self.arrived(clock)
            raise
        if result is None:
            return None, tokens
        self.arrived(clock)
        _clock_parts(clock, [stamps])
        return result, tokens

    def part_texts(self, emb=None) -> int:
        """Texts per queue part of a large request to ``emb`` (default: the default
        embedding model); see :data:`PART_TEXTS`."""
        emb = emb or self.ready()
        return max(PART_TEXTS, min(PART_TEXTS_MAX, 4 * emb.max_batch_tokens // emb.max_length))

    async def _submit(self, part: EmbedRequest, first: bool, stamps: dict[str, float],
                      slot=None, tokens: int | None = None) -> EmbedResult:
        clock = CLOCK.get()  # the request's (a task starts with a copy of the context)
        batcher = slot.batcher if slot else self.batcher
        try:
            if tokens is None:  # not counted yet (counted ones were timed by _now)
                tokens = await self.count_tokens(part, slot.embedder if slot else None)
                if first:
                    lap("tokenize")
            while True:
                try:
                    job = batcher.enqueue(part, tokens, stamps)
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

    # -- the one rerank path --------------------------------------------------------------
    async def rerank(self, request, rerank: RerankRequest, slot,
                     protocol: str = "native") -> RerankResult:
        """Queue a request value built by a reranker service's ``request`` on ``slot``'s
        rerank batcher and wait for it as :meth:`embed` does. Admission counts each
        document as an input; an over-long query or pair with truncation off is refused
        (by the service's ``count_tokens``) before queueing."""
        self.check_inputs(rerank.documents, protocol, field="documents")
        if len(rerank) > COUNT_ON_LOOP:
            tokens = await asyncio.to_thread(slot.reranker.count_tokens, rerank)
        else:
            tokens = slot.reranker.count_tokens(rerank)
        watch = asyncio.ensure_future(_client_left(request)) if request is not None else None
        job = asyncio.ensure_future(slot.rerank_batcher.submit(rerank, tokens))
        try:
            return await self._wait(job, watch, 0)
        finally:
            if watch:
                watch.cancel()

    async def _wait(self, job: asyncio.Future, watch: asyncio.Future | None, start: int
                    ) -> EmbedResult | RerankResult:
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


def _clock_parts(clock: StageClock | None, stamps: list[dict[str, float]]) -> None:
    """Put a request's parts' batch stamps (see :meth:`DynamicBatcher.submit`) on its
    stage clock: the first part's queue time, the parts' inference summed, the stage
    after inference starting when the last part finished."""
    if clock is not None and all("finished" in s for s in stamps):
        clock.seconds["queue"] = stamps[0]["queue"]
        clock.seconds["inference"] = sum(s["inference"] for s in stamps)
        clock.last = stamps[-1]["finished"]


def _strings(request: EmbedRequest, emb) -> list[str]:
    """The strings of ``request`` as ``emb`` will tokenise them (prompt included), so the
    count is what the model processes and the batch reuses the counted ids."""
    return [t for t in emb.with_prompt(request.texts, request.options) if isinstance(t, str)]


def _admitted(request: EmbedRequest, emb, lengths: list[int]) -> int:
    """Tokens ``request`` occupies given its strings' ``lengths`` (token-id inputs count
    their own length with the special tokens the model adds): each text at most the
    model's limit, unless it is chunked."""
    lengths = [*lengths, *(len(emb.tokenizer.with_special(t)) for t in request.texts
                           if not isinstance(t, str))]
    if request.options.overflow == "chunk":  # every token goes through the model
        return sum(lengths)
    return sum(min(n, emb.max_length) for n in lengths)


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
        usage=Usage.concat(r.usage for r in results))


def offset_indices(exc: InputTooLongError | NonFiniteOutputError, start: int) -> Exception:
    """``exc`` of a part starting at text ``start``, its indexes made the request's."""
    if not start:
        return exc
    if isinstance(exc, InputTooLongError):
        return InputTooLongError({i + start: n for i, n in exc.too_long.items()}, exc.limit,
                                 field=exc.field)
    return NonFiniteOutputError([i + start for i in exc.indices])


async def _client_left(request) -> None:
    """Returns when the client disconnects (the body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
