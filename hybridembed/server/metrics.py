"""Prometheus metrics of one server (its own registry, so several apps can coexist)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hybridembed_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("hybridembed_request_seconds", "HTTP request latency",
                                 ["route"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.queue_texts = Gauge("hybridembed_queue_texts", "texts waiting in the queue",
                                 registry=r)
        self.queue_tokens = Gauge("hybridembed_queue_tokens", "tokens waiting in the queue",
                                  registry=r)
        self.batch_texts = Histogram("hybridembed_batch_texts", "texts per batch", registry=r,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_tokens = Histogram("hybridembed_batch_tokens", "tokens per batch", registry=r,
                                      buckets=(16, 64, 256, 1024, 4096, 16384, 65536, 262144))
        self.batch_requests = Histogram("hybridembed_batch_requests", "requests merged per batch",
                                        registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.tokens = Counter("hybridembed_tokens", "tokens embedded", registry=r)
        self.texts = Counter("hybridembed_texts", "texts embedded", registry=r)
        self.tokens_per_second = Gauge("hybridembed_tokens_per_second",
                                       "tokens per second of the last batch", registry=r)
        self.cache_hits = Gauge("hybridembed_cache_hits", "result cache hits", registry=r)
        self.cache_misses = Gauge("hybridembed_cache_misses", "result cache misses", registry=r)

    def record_batch(self, record) -> None:
        self.batch_texts.observe(record.texts)
        self.batch_tokens.observe(record.tokens)
        self.batch_requests.observe(record.requests)
        self.tokens.inc(record.tokens)
        self.texts.inc(record.texts)
        if record.seconds > 0:
            self.tokens_per_second.set(record.tokens / record.seconds)

    def render(self, queue_texts: int, queue_tokens: int, cache: dict | None) -> bytes:
        self.queue_texts.set(queue_texts)
        self.queue_tokens.set(queue_tokens)
        if cache:
            self.cache_hits.set(cache["hits"])
            self.cache_misses.set(cache["misses"])
        return generate_latest(self.registry)
