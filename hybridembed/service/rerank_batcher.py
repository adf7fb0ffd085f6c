"""Dynamic batching of rerank requests: the embedding batcher's queue, admission and
packing (requests with equal :class:`RerankOptions` up to a token budget, a request's
tokens being its query + document pairs), with a merge step of its own: the merged
requests are scored in one pass by the service's ``run_many``, and each gets its own
result or its own error. No HTTP here."""

from __future__ import annotations

import asyncio
import logging
import time

from ..types import RerankResult
from .batcher import BatchRecord, DynamicBatcher, fail_batch

log = logging.getLogger(__name__)


class RerankBatcher(DynamicBatcher):
    """A :class:`DynamicBatcher` over a reranker service (see
    :mod:`hybridembed.service.rerank`). ``submit(request, tokens)`` takes a
    :class:`RerankRequest` and returns its :class:`RerankResult`; admission counts each
    document as one text."""

    def __init__(self, service, **options):
        super().__init__(service, **options)
        self.service = service

    async def _run(self, batch, lanes: int = 1) -> None:
        try:
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._pool, self.service.run_many,
                                                 [job.request for job in batch])
            if self.on_batch:
                pairs = sum(len(job.request) for job in batch)
                tokens = sum(r.usage.total_tokens for r in results
                             if isinstance(r, RerankResult))
                self.on_batch(BatchRecord(pairs, tokens, len(batch),
                                          time.perf_counter() - started))
            for job, result in zip(batch, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
        except BaseException as exc:  # every waiting request gets an answer
            fail_batch(batch, exc, "rerank batch")
        finally:
            for _ in range(lanes):  # the lanes the worker took for this batch
                self._free_lanes.release()
