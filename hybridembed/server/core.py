"""What every protocol route shares: the loaded model, the batcher, admission checks
(input count, per-text token limit, token counting) and waiting with a timeout while
watching for the client to leave. Routes only translate their wire format. Each stage
of an embedding request is timed on its :class:`~.metrics.StageClock`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from ..config import Settings
from ..errors import RequestTimeoutError
from ..service.batcher import DynamicBatcher
from ..types import EmbedRequest, EmbedResult
from .errors import ApiError
from .metrics import CLOCK, Metrics, StageClock, lap

log = logging.getLogger(__name__)


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

    def check_inputs(self, texts, allow_empty: bool = False) -> None:
        """Admission limits of this server (not validity): at least one input, at most
        ``max_inputs``."""
        if not texts and not allow_empty:
            raise ApiError(400, "input is empty; send at least one text", "empty", "input")
        if len(texts) > self.settings.max_inputs:
            raise ApiError(413, f"{len(texts)} inputs in one request; the limit is "
                           f"{self.settings.max_inputs}", "too_large", "input")

    async def count_tokens(self, request: EmbedRequest) -> int:
        """Tokens the request will occupy (each text at most the model's limit), for
        admission and batch packing; whether a text may be cut is the Embedder's call."""
        emb = self.ready()
        texts = request.texts  # checked when the request value was built
        if len(texts) > 64:
            lengths = await asyncio.to_thread(emb.tokenizer.lengths, texts)
        else:
            lengths = emb.tokenizer.lengths(texts)
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

    async def embed(self, request, embed: EmbedRequest) -> EmbedResult:
        """Queue a request value built by :meth:`Embedder.request` (validated there, not
        here) and wait for it, at most the request timeout, while watching whether the
        HTTP client (``request``) leaves."""
        self.ready()
        clock = CLOCK.get()
        stamps: dict[str, float] = {}
        try:
            self.check_inputs(embed.texts)
            tokens = await self.count_tokens(embed)
            lap("tokenize")
            job = self.batcher.enqueue(embed, tokens, stamps)
        finally:
            self.arrived(clock)  # queued (or refused) in the same step: no lane waits on it
        watch = asyncio.ensure_future(_client_left(request)) if request is not None else None
        waiting = {job} | ({watch} if watch else set())
        try:
            done, _ = await asyncio.wait(waiting, timeout=self.settings.request_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watch:
                watch.cancel()
        if job in done:
            if clock is not None and "finished" in stamps:
                clock.seconds["queue"] = stamps["queue"]
                clock.seconds["inference"] = stamps["inference"]
                clock.last = stamps["finished"]
            return job.result()
        job.cancel()
        if watch is not None and watch in done:
            raise ApiError(499, "client closed the request", "invalid_request")
        raise RequestTimeoutError(f"request waited more than {self.settings.request_timeout:g} s "
                                  "and was dropped; retry later or raise the timeout")


async def _client_left(request) -> None:
    """Returns when the client disconnects (the body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
