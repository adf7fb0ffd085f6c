"""The dynamic batcher with a recording embedder: merging, dropping callers who left,
admission by texts, and failures that reach every waiting request."""

import asyncio
import threading

import numpy as np
import pytest

from hybridembed.errors import OverloadedError
from hybridembed.service.batcher import DynamicBatcher
from hybridembed.types import EmbedOptions, EmbedRequest, EmbedResult, Usage


class RecordingEmbedder:
    """Stands in for the model: dense row = [len(text)], and a gate to hold a batch."""

    def __init__(self, fail=False):
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = fail

    def run(self, request):
        texts = request.texts
        self.gate.wait(10)
        self.calls.append(list(texts))
        if self.fail:
            raise RuntimeError("device on fire")
        dense = np.array([[len(t)] for t in texts], np.float32)
        return EmbedResult("fake", dense, None, None, Usage([1] * len(texts)))


def req(texts) -> EmbedRequest:
    return EmbedRequest(tuple(texts), EmbedOptions())


def run(coro):
    return asyncio.run(coro)


def test_waiting_requests_merge_and_each_gets_its_rows():
    async def main():
        emb = RecordingEmbedder()
        b = DynamicBatcher(emb, max_batch_tokens=1000)
        await b.start()
        emb.gate.clear()
        first = asyncio.create_task(b.submit(req(["a"]), 1))
        await asyncio.sleep(0.05)  # the first batch now holds the model
        rest = [asyncio.create_task(b.submit(req(["x" * i, "y" * i]), 2))
                for i in range(2, 6)]
        await asyncio.sleep(0.05)
        emb.gate.set()
        results = await asyncio.gather(first, *rest)
        await b.stop()
        return emb.calls, results

    calls, results = run(main())
    assert calls[0] == ["a"] and len(calls) == 2 and len(calls[1]) == 8
    for i, r in enumerate(results[1:], start=2):
        assert r.dense[:, 0].tolist() == [i, i]


def test_callers_who_left_are_dropped_before_compute():
    async def main():
        emb = RecordingEmbedder()
        b = DynamicBatcher(emb, max_batch_tokens=1000)
        await b.start()
        emb.gate.clear()
        busy = asyncio.create_task(b.submit(req(["busy"]), 1))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(b.submit(req(["gone"]), 1))
        stays = asyncio.create_task(b.submit(req(["stays"]), 1))
        await asyncio.sleep(0.05)
        gone.cancel()
        emb.gate.set()
        await asyncio.gather(busy, stays)
        await b.stop()
        return emb.calls, b.queued_texts

    calls, queued = run(main())
    assert calls == [["busy"], ["stays"]] and queued == 0


def test_admission_counts_texts_not_requests():
    async def main():
        emb = RecordingEmbedder()
        b = DynamicBatcher(emb, max_batch_tokens=1000, max_queued_texts=3)
        await b.start()
        emb.gate.clear()
        hold = asyncio.create_task(b.submit(req(["hold"]), 1))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(b.submit(req(["a", "b"]), 2))
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError):
            await b.submit(req(["c", "d"]), 2)
        emb.gate.set()
        await asyncio.gather(hold, queued)
        await b.stop()

    run(main())


def test_a_failed_batch_fails_every_waiting_request():
    async def main():
        emb = RecordingEmbedder(fail=True)
        b = DynamicBatcher(emb, max_batch_tokens=1000)
        await b.start()
        results = await asyncio.gather(*(b.submit(req([f"t{i}"]), 1)
                                         for i in range(10)), return_exceptions=True)
        # the worker survives: a later request is still answered (with the same error)
        later = await asyncio.gather(b.submit(req(["later"]), 1),
                                     return_exceptions=True)
        await b.stop()
        return results + later

    results = run(main())
    assert all(isinstance(r, RuntimeError) and "on fire" in str(r) for r in results)
