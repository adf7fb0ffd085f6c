"""Prometheus metrics of one server (its own registry, so several apps can coexist), and
the per-request stage clock behind the ``hybridembed_request_stage_seconds`` histograms.

An embedding request goes through these stages, each observed once per request (seconds):

- ``parse``: from the edge middleware seeing the request (HTTP head already read by the
  server) to the route asking for a request value: body read, JSON decode, wire model;
- ``validate``: building the :class:`~hybridembed.types.EmbedRequest` (text and option
  checks);
- ``tokenize``: counting its tokens for admission and batch packing;
- ``queue``: waiting in the batcher until its batch starts;
- ``inference``: its batch's ``Embedder.run`` (tokenise, forward, heads), shared by every
  request merged into that batch;
- ``serialize``: from the batch's end to the response head being sent (handing the result
  back to the event loop, rendering the body);
- ``write``: from the response head to the last body byte handed to the server.

Like text-embeddings-inference's tokenization / queue / inference histograms, they show
where the time of a request goes whatever else the machine is doing.
"""

from __future__ import annotations

import contextvars
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGES: tuple[str, ...] = ("parse", "validate", "tokenize", "queue", "inference", "serialize",
                           "write")
STAGE_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                 5, 10, 30)


class StageClock:
    """Seconds one HTTP request spent in each stage. :meth:`lap` closes the stage that
    ran since the previous lap (or since the request arrived)."""

    __slots__ = ("announced", "last", "seconds")

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.announced = None  # the batcher told of this request, until it is queued

    def lap(self, stage: str, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self.seconds[stage] = self.seconds.get(stage, 0.0) + max(0.0, now - self.last)
        self.last = now


# The clock of the HTTP request being handled: set by the edge middleware, read by the
# core (the route runs in the middleware's task, so the context carries it there).
CLOCK: contextvars.ContextVar[StageClock | None] = contextvars.ContextVar(
    "hybridembed_stage_clock", default=None)


def lap(stage: str, now: float | None = None) -> None:
    """Close ``stage`` on the current request's clock (nothing outside a request)."""
    clock = CLOCK.get()
    if clock is not None:
        clock.lap(stage, now)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hybridembed_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("hybridembed_request_seconds", "HTTP request latency",
                                 ["route"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        stage = Histogram("hybridembed_request_stage_seconds",
                          "time an embedding request spent in each stage (parse, validate, "
                          "tokenize, queue, inference, serialize, write)", ["stage"],
                          registry=r, buckets=STAGE_BUCKETS)
        self.stages = {name: stage.labels(name) for name in STAGES}
        self.queue_texts = Gauge("hybridembed_queue_texts", "texts waiting in the queue",
                                 registry=r)
        self.queue_tokens = Gauge("hybridembed_queue_tokens", "tokens waiting in the queue",
                                  registry=r)
        self.batch_texts = Histogram("hybridembed_batch_texts", "texts per batch", registry=r,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_tokens = Histogram("hybridembed_batch_tokens", "tokens per batch", registry=r,
                                      buckets=(16, 64, 256, 1024, 4096, 16384, 65536, 262144))
        self.batch_fill = Histogram("hybridembed_batch_fill",
                                    "tokens per batch / the batch token budget", registry=r,
                                    buckets=(.1, .25, .5, .75, .9, 1, 2, 4, 8))
        self.batch_requests = Histogram("hybridembed_batch_requests", "requests merged per batch",
                                        registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_seconds = Histogram("hybridembed_batch_seconds",
                                       "time of one batch's Embedder.run", registry=r,
                                       buckets=STAGE_BUCKETS)
        self.tokens = Counter("hybridembed_tokens", "tokens embedded", registry=r)
        self.texts = Counter("hybridembed_texts", "texts embedded", registry=r)
        self.tokens_per_second = Gauge("hybridembed_tokens_per_second",
                                       "tokens per second of the last batch", registry=r)
        self.cache_hits = Gauge("hybridembed_cache_hits", "result cache hits", registry=r)
        self.cache_misses = Gauge("hybridembed_cache_misses", "result cache misses", registry=r)

    def record_batch(self, record) -> None:
        self.batch_texts.observe(record.texts)
        self.batch_tokens.observe(record.tokens)
        if record.budget:
            self.batch_fill.observe(record.tokens / record.budget)
        self.batch_requests.observe(record.requests)
        self.batch_seconds.observe(record.seconds)
        self.tokens.inc(record.tokens)
        self.texts.inc(record.texts)
        if record.seconds > 0:
            self.tokens_per_second.set(record.tokens / record.seconds)

    def record_stages(self, clock: StageClock) -> None:
        for stage, seconds in clock.seconds.items():
            self.stages[stage].observe(seconds)

    def render(self, queue_texts: int, queue_tokens: int, cache: dict | None) -> bytes:
        self.queue_texts.set(queue_texts)
        self.queue_tokens.set(queue_tokens)
        if cache:
            self.cache_hits.set(cache["hits"])
            self.cache_misses.set(cache["misses"])
        return generate_latest(self.registry)
