"""Dynamic batching of rerank requests: the embedding batcher's queue, admission and
packing (requests with equal :class:`RerankOptions` up to a token budget, a request's
tokens being its query + document pairs), with a merge step of its own: the merged
requests are scored in one pass by the service's ``run_many``, and each gets its own
result or its own error. No HTTP here."""

from __future__ import annotations

import time

from ..types import RerankResult
from .batcher import DynamicBatcher


class RerankBatcher(DynamicBatcher):
    """A :class:`DynamicBatcher` over a reranker service (see
    :mod:`hybridembed.service.rerank`). ``submit(request, tokens)`` takes a
    :class:`RerankRequest` and returns its :class:`RerankResult`; admission counts each
    document as one text."""

    def __init__(self, service, **options):
        super().__init__(service, **options)
        self.service = service

    def _compute(self, batch, lanes: int) -> tuple:
        started = time.perf_counter()
        results = self.service.run_many([job.request for job in batch])
        return results, started, time.perf_counter()

    def _deliver(self, batch, lanes: int, outcome: tuple) -> None:
        results, started, finished = outcome
        self._record(batch, lanes, finished - started, sum(len(job.request) for job in batch),
                     sum(r.usage.total_tokens for r in results if isinstance(r, RerankResult)))
        for job, result in zip(batch, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
