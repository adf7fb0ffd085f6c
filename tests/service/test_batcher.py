"""The dynamic batcher with a recording embedder: merging, dropping callers who left,
admission by texts, failures that reach every waiting request, lone short batches run on
the event loop's thread, and batches taken by length for runtimes that pad."""

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


class WorkingEmbedder:
    """Stands in for the model under sustained load: each text's row is derived from the
    text alone (so a row given to the wrong caller shows), a batch takes time in proportion
    to its texts (``time.sleep`` frees the GIL, as a forward pass does), and every call's
    shape is recorded: texts, options, threads, and how many calls ran at once."""

    def __init__(self, per_text: float = 0.0005, per_batch: float = 0.002):
        self.per_text, self.per_batch = per_text, per_batch
        self.calls: list[tuple[int, EmbedOptions, int | None]] = []
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.whole_machine = False  # a call with the embedder's own threads is running
        self.overlaps = 0  # calls that ran beside one that should have had the machine

    @staticmethod
    def row(text: str, width: int = 4) -> list[float]:
        return [float(len(text)), float(sum(map(ord, text)) % 9973), float(ord(text[-1])),
                float(width)][:width]

    def run(self, request, threads=None):
        with self.lock:
            if self.whole_machine or (threads is None and self.running):
                self.overlaps += 1
            self.whole_machine = threads is None
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.calls.append((len(request.texts), request.options, threads))
        try:
            import time

            time.sleep(self.per_batch + self.per_text * len(request.texts))
            width = request.options.dimensions or 4
            dense = np.array([self.row(t, width) for t in request.texts], np.float32)
            return EmbedResult("fake", dense, None, None, Usage([1] * len(request.texts)))
        finally:
            with self.lock:
                self.running -= 1
                if threads is None:
                    self.whole_machine = False


async def _behind_a_held_batch(emb: RecordingEmbedder, b: DynamicBatcher,
                               jobs: list[tuple[EmbedRequest, int]]) -> list[EmbedResult]:
    """Submit ``jobs`` (request, tokens) while a first request holds the model, then let
    it go; every result, the holder's first."""
    await b.start()
    emb.gate.clear()
    hold = asyncio.create_task(b.submit(req(["hold"]), 1))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(b.submit(r, tokens)) for r, tokens in jobs]
    await asyncio.sleep(0.05)
    emb.gate.set()
    results = await asyncio.gather(hold, *rest)
    await b.stop()
    return results


@pytest.mark.parametrize("waiting", [1, 4, 16])
def test_batch_fill_grows_with_the_work_waiting(waiting):
    """While the model is busy, requests pile up; the next batch takes all of them (up to
    the budget), so a batch holds as much as waits."""
    emb = RecordingEmbedder()
    run(_behind_a_held_batch(emb, DynamicBatcher(emb, max_batch_tokens=64),
                             [(req([f"t{i}"]), 4) for i in range(waiting)]))
    sizes = [len(c) for c in emb.calls]
    # 64 tokens / 4 per request: at most 16 per batch
    assert sizes[0] == 1 and sizes[1] == min(waiting, 16) and sum(sizes) == waiting + 1


def test_full_batches_fill_the_token_budget_exactly():
    emb = RecordingEmbedder()
    results = run(_behind_a_held_batch(emb, DynamicBatcher(emb, max_batch_tokens=100),
                                       [(req([f"t{i}"]), 10) for i in range(45)]))
    calls = emb.calls
    assert [len(c) for c in calls] == [1, 10, 10, 10, 10, 5]
    # queue order is kept: batch k holds requests 10k .. 10k+9
    assert calls[1:] == [[f"t{i}" for i in range(k, min(k + 10, 45))] for k in range(0, 45, 10)]
    assert [r.dense[0, 0] for r in results[1:]] == [len(f"t{i}") for i in range(45)]


@pytest.mark.parametrize("by_length", [False, True])
def test_sustained_concurrent_load_keeps_every_answer_with_its_caller(by_length):
    """32 clients, each sending 12 requests one after another (1-3 texts, two option sets),
    against two lanes: nothing is lost, reordered or mixed up, option sets never share a
    batch, lanes run side by side with one thread each (a call with every thread only
    alone), and batches fill up under load."""
    options = [EmbedOptions(), EmbedOptions(dimensions=3)]

    async def client(b, c):
        answers = []
        for k in range(12):
            texts = [f"client {c} request {k} text {j}" + "x" * ((c * 7 + k) % 5)
                     for j in range(1 + (c + k) % 3)]
            opts = options[(c + k) % 2]
            result = await b.submit(EmbedRequest(tuple(texts), opts), 5 * len(texts))
            answers.append((texts, opts, result))
        return answers

    async def main():
        emb = WorkingEmbedder()
        records = []
        b = DynamicBatcher(emb, max_batch_tokens=200, lanes=2, threads=1,
                           on_batch=records.append, by_length=cut(200) if by_length else None)
        await b.start()
        answers = await asyncio.gather(*(client(b, c) for c in range(32)))
        await b.stop()
        return emb, records, [a for per_client in answers for a in per_client]

    emb, records, answers = run(main())
    assert len(answers) == 32 * 12
    for texts, opts, result in answers:
        width = opts.dimensions or 4
        assert result.dense.shape == (len(texts), width)
        np.testing.assert_array_equal(result.dense, [WorkingEmbedder.row(t, width)
                                                     for t in texts])
    assert sum(r.texts for r in records) == sum(len(t) for t, _, _ in answers)
    assert emb.overlaps == 0
    assert emb.most_running == 2  # both lanes busy at once
    assert sum(threads == 1 for _, _, threads in emb.calls) > len(emb.calls) / 2
    # 32 clients keep work waiting: batches hold several requests, not one each
    assert sum(r.requests for r in records) / len(records) > 3


@pytest.mark.parametrize("by_length", [False, True])
def test_a_call_alone_gets_the_whole_machine(by_length):
    """With nothing else queued or running, a request (one text of a lone client, or one
    call of lanes x budget tokens) runs with the embedder's own threads; a large call
    that arrives while a lane is busy waits for it, then runs alone; under load, lanes."""
    async def main():
        emb = WorkingEmbedder(per_text=0, per_batch=0.05)
        b = DynamicBatcher(emb, max_batch_tokens=100, lanes=2, threads=1,
                           inline_max_seconds=0,  # lone batches on the loop: tested below
                           by_length=cut(100) if by_length else None)
        await b.start()
        small = await b.submit(req(["small"]), 5)
        busy = asyncio.create_task(b.submit(req(["busy"]), 5))
        await asyncio.sleep(0.01)
        side = asyncio.create_task(b.submit(req(["side"]), 5))
        await asyncio.sleep(0.01)
        big = asyncio.create_task(b.submit(req([f"big {i}" for i in range(50)]), 250))
        await asyncio.gather(busy, side, big)
        await b.stop()
        return emb, small, big.result()

    emb, small, big = run(main())
    assert [(n, threads) for n, _, threads in emb.calls] == [(1, None), (1, None), (1, 1),
                                                              (50, None)]
    assert emb.overlaps == 0 and small.dense[0, 0] == 5 and big.dense.shape == (50, 4)


def test_a_free_lane_waits_for_requests_the_edge_announced():
    """The edge announces a request as it arrives; a lane about to start waits until it is
    queued, so it joins the batch instead of running alone after it."""
    async def main():
        emb = RecordingEmbedder()
        b = DynamicBatcher(emb, max_batch_tokens=1000, max_settle_ms=2000)
        await b.start()
        b.expect()
        b.expect()
        first = b.enqueue(req(["first"]), 1)
        b.arrived()
        await asyncio.sleep(0.05)  # still being parsed, in the real server
        second = b.enqueue(req(["second"]), 1)
        b.arrived()
        await asyncio.gather(first, second)
        await b.stop()
        return emb.calls

    assert run(main()) == [["first", "second"]]


class ThreadRecorder(WorkingEmbedder):
    """A :class:`WorkingEmbedder` that also records the thread each call ran on; a text
    "bad" fails as too long (the others of its batch embedded)."""

    def __init__(self, **timing):
        super().__init__(**timing)
        self.threads: list[str] = []

    def run(self, request, threads=None):
        from hybridembed.errors import InputTooLongError

        self.threads.append(threading.current_thread().name)
        result = super().run(request, threads)
        bad = [i for i, t in enumerate(request.texts) if t == "bad"]
        if bad:
            ok = [i for i in range(len(request.texts)) if i not in bad]
            partial = EmbedResult("fake", result.dense[ok], None, None, Usage([1] * len(ok)))
            raise InputTooLongError({i: 999 for i in bad}, 512, partial, ok)
        return result


def test_a_short_lone_batch_runs_on_the_event_loop_thread():
    """Once a whole-machine batch has been timed, a lone batch predicted to end within
    ``inline_max_seconds`` runs on the loop's thread; one predicted longer, and the first
    (nothing to predict from), on a worker. Answers and errors are the same either way."""
    async def main():
        emb = ThreadRecorder(per_text=0, per_batch=0.01)
        b = DynamicBatcher(emb, max_batch_tokens=1000, lanes=2, threads=1,
                           inline_max_seconds=0.05)
        await b.start()
        first = await b.submit(req(["first"]), 2)  # nothing known yet: a worker
        short = await b.submit(req(["short"]), 2)  # ~0.01 s predicted: inline
        long = await b.submit(req(["long"]), 40)  # ~0.2 s predicted: a worker
        mixed = await asyncio.gather(b.submit(req(["ok", "bad"]), 2), return_exceptions=True)
        await b.stop()
        return emb, first, short, long, mixed[0]

    emb, first, short, long, mixed = run(main())
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop here
    assert emb.threads[0] != loop_thread and emb.threads[1] == loop_thread
    assert emb.threads[2] != loop_thread and emb.threads[3] == loop_thread
    assert [(n, threads) for n, _, threads in emb.calls] == [(1, None)] * 3 + [(2, None)]
    for result, text in ((first, "first"), (short, "short"), (long, "long")):
        np.testing.assert_array_equal(result.dense, [WorkingEmbedder.row(text)])
    assert mixed.too_long == {1: 999}  # the bad text's own index, inline too
    np.testing.assert_array_equal(mixed.partial.dense, [WorkingEmbedder.row("ok")])


def test_no_inline_run_while_a_request_is_still_arriving():
    """A lone batch holds the loop only when nothing else needs it: not while a request
    the edge announced is still being parsed (under load, batches run in lanes: see the
    sustained-load test, where no call ever ran beside a whole-machine one)."""
    async def main():
        emb = ThreadRecorder(per_text=0, per_batch=0.01)
        b = DynamicBatcher(emb, max_batch_tokens=1000, lanes=2, threads=1,
                           inline_max_seconds=10, max_settle_ms=1)
        await b.start()
        await b.submit(req(["timed"]), 1)  # on a worker: nothing known yet
        b.expect()  # a request the edge has received and not yet queued
        await b.submit(req(["announced"]), 1)
        b.arrived()
        await b.submit(req(["alone"]), 1)
        await b.stop()
        return emb

    emb = run(main())
    loop_thread = threading.current_thread().name
    assert [name == loop_thread for name in emb.threads] == [False, False, True]


def test_a_failing_inline_batch_fails_its_requests_and_the_worker_carries_on():
    async def main():
        emb = RecordingEmbedder()
        b = DynamicBatcher(emb, max_batch_tokens=1000, inline_max_seconds=10)
        await b.start()
        await b.submit(req(["timed"]), 1)
        emb.fail = True
        failed = await asyncio.gather(b.submit(req(["inline"]), 1), return_exceptions=True)
        emb.fail = False
        later = await b.submit(req(["later"]), 1)
        await b.stop()
        return failed[0], later

    failed, later = run(main())
    assert isinstance(failed, RuntimeError) and "on fire" in str(failed)
    assert later.dense[0, 0] == len("later")


def test_run_now_runs_a_lone_request_in_the_callers_step_as_submit_would():
    """An idle batcher runs ``run_now``'s request at once on the caller's thread, without
    queueing it or waking the worker: the same rows, stamps and errors as ``submit``. Not
    before a batch has been timed, not for one predicted too long (``None``: queue it)."""
    async def main():
        emb = ThreadRecorder(per_text=0, per_batch=0.01)
        b = DynamicBatcher(emb, max_batch_tokens=1000, lanes=2, threads=1,
                           inline_max_seconds=0.05)
        await b.start()
        untimed = b.run_now(req(["untimed"]), 2)  # nothing to predict from yet
        await b.submit(req(["timed"]), 2)
        stamps: dict = {}
        woke = b._wakeup.is_set()
        now = b.run_now(req(["now"]), 2, stamps)
        queued_after = (b.queued_texts, b._wakeup.is_set() != woke)
        long = b.run_now(req(["long"]), 40)  # ~0.2 s predicted
        with pytest.raises(Exception) as bad:
            b.run_now(req(["ok", "bad"]), 2)
        await b.stop()
        return emb, untimed, now, stamps, queued_after, long, bad.value

    emb, untimed, now, stamps, queued_after, long, bad = run(main())
    loop_thread = threading.current_thread().name
    assert untimed is None and long is None
    assert [n for n, _, _ in emb.calls] == [1, 1, 2]  # timed, now, ok + bad
    assert emb.threads[0] != loop_thread and emb.threads[1] == emb.threads[2] == loop_thread
    np.testing.assert_array_equal(now.dense, [WorkingEmbedder.row("now")])
    assert set(stamps) == {"queue", "inference", "finished"} and stamps["inference"] > 0
    assert queued_after == (0, False)  # never queued, the worker never woken
    assert bad.too_long == {1: 999}  # as submit raises it
    np.testing.assert_array_equal(bad.partial.dense, [WorkingEmbedder.row("ok")])


def test_run_now_answers_before_its_batch_is_recorded():
    """A lone request run in its caller's step gets its rows before the batch is learned
    from or handed to ``on_batch``: both come in the loop's next step, so the answer is
    written first; the rows are the request's own."""
    async def main():
        records = []
        emb = ThreadRecorder(per_text=0, per_batch=0.01)
        b = DynamicBatcher(emb, max_batch_tokens=1000, lanes=2, threads=1,
                           inline_max_seconds=0.05, on_batch=records.append)
        await b.start()
        await b.submit(req(["timed"]), 2)
        await asyncio.sleep(0)
        learned = b._seconds_per_token
        b._seconds_per_token = 1e-9  # a marker: overwritten when the batch is learned
        now = b.run_now(req(["now", "and this"]), 4)
        at_answer = (len(records), b._seconds_per_token)
        await asyncio.sleep(0)
        after = (len(records), b._seconds_per_token)
        await b.stop()
        return learned, now, at_answer, after, records

    learned, now, at_answer, after, records = run(main())
    assert learned is not None
    np.testing.assert_array_equal(now.dense, [WorkingEmbedder.row("now"),
                                              WorkingEmbedder.row("and this")])
    assert at_answer == (1, 1e-9)  # only the earlier batch's record, nothing learned yet
    assert after[0] == 2 and after[1] != 1e-9
    assert records[1].texts == 2 and records[1].requests == 1


def test_run_now_declines_while_anything_else_is_queued_running_or_arriving():
    async def main():
        emb = RecordingEmbedder()
        b = DynamicBatcher(emb, max_batch_tokens=1000, inline_max_seconds=1, max_settle_ms=1)
        await b.start()
        await b.submit(req(["timed"]), 1)
        b.expect()  # the caller's own request, announced by the edge
        mine = b.run_now(req(["mine"]), 1, announced=1)
        b.arrived()
        b.expect()  # another client's request, still being parsed
        arriving = b.run_now(req(["x"]), 1)
        b.arrived()
        emb.gate.clear()  # the next batch runs (predicted long: on a worker) until opened
        running = b.enqueue(req(["held"]), 10**9)
        while b.queued_texts:  # until a lane has taken it
            await asyncio.sleep(0.01)
        beside = b.run_now(req(["x"]), 1)
        emb.gate.set()
        await running
        after = b.run_now(req(["after"]), 1)
        await b.stop()
        return mine, arriving, beside, after, emb.calls

    mine, arriving, beside, after, calls = run(main())
    assert mine is not None and arriving is None and beside is None and after is not None
    assert calls == [["timed"], ["mine"], ["held"], ["after"]]


def test_run_now_keeps_the_admission_limits():
    async def main():
        b = DynamicBatcher(RecordingEmbedder(), max_batch_tokens=1000, max_queued_texts=2,
                           inline_max_seconds=10)
        with pytest.raises(RuntimeError, match="not running"):  # both share admission
            b.enqueue(req(["x"]), 1)
        await b.start()
        await b.submit(req(["timed"]), 1)
        with pytest.raises(OverloadedError):
            b.run_now(req(["a", "b", "c"]), 3)
        ok = b.run_now(req(["a", "b"]), 2)
        await b.stop()
        return ok

    assert run(main()).dense.shape[0] == 2


def cut(budget: int):
    """The engine's cut of padded CPU batches (cost-weighed), as ``by_length``."""
    from hybridembed.engine.packing import pack_by_token_budget

    return lambda lengths: pack_by_token_budget(lengths, budget, batch_overhead=10)


@pytest.mark.parametrize("oldest", ["long", "short"])
def test_by_length_a_batch_is_the_oldest_requests_length_in_queue_order(oldest):
    """Long and short requests wait interleaved; by length, the next batch holds those of
    the oldest one's length (a request of two short texts whole among them), in queue
    order, and the next batch the others: not every waiting request mixed."""
    kinds = ["long", "short"] if oldest == "long" else ["short", "long"]
    jobs = [(req([f"{kinds[i % 2]} {i}"]), 50 if kinds[i % 2] == "long" else 5)
            for i in range(12)] + [(req(["short pair a", "short pair b"]), 10)]
    emb = RecordingEmbedder()
    results = run(_behind_a_held_batch(
        emb, DynamicBatcher(emb, max_batch_tokens=1000, by_length=cut(1000)), jobs))
    longs = [f"long {i}" for i in range(12) if kinds[i % 2] == "long"]
    shorts = [f"short {i}" for i in range(12) if kinds[i % 2] == "short"]
    shorts += ["short pair a", "short pair b"]
    assert emb.calls[1:] == ([longs, shorts] if oldest == "long" else [shorts, longs])
    for (request, _), result in zip(jobs, results[1:], strict=True):
        assert result.dense[:, 0].tolist() == [len(t) for t in request.texts]


def test_by_length_keeps_the_request_cap_and_never_passes_over_the_oldest():
    """With a cap of 2 requests per batch, each batch holds the oldest waiting request and
    the next of its length; a lone odd length is not left behind."""
    jobs = [(req(["odd"]), 30)] + [(req([f"s{i}"]), 5) for i in range(5)]
    emb = RecordingEmbedder()
    run(_behind_a_held_batch(emb, DynamicBatcher(emb, max_batch_tokens=1000,
                                                 max_batch_requests=2, by_length=cut(1000)),
                             jobs))
    assert emb.calls[1:] == [["odd"], ["s0", "s1"], ["s2", "s3"], ["s4"]]


class TextRecorder(WorkingEmbedder):
    """A :class:`WorkingEmbedder` that also records each call's texts."""

    def __init__(self, **timing):
        super().__init__(**timing)
        self.texts: list[list[str]] = []

    def run(self, request, threads=None):
        self.texts.append(list(request.texts))
        return super().run(request, threads)


@pytest.mark.parametrize("by_length", [False, True])
def test_under_sustained_load_by_length_batches_hold_one_length(by_length):
    """32 clients, each sending 10 single texts, long (50 tokens) and short (5) in turn,
    against two lanes: by length, no batch mixes long and short texts (the cut puts them
    apart); in queue order, batches mix them. Either way every caller gets its own rows."""
    async def client(b, c):
        answers = []
        for k in range(10):
            long = (c + k) % 2 == 0
            text = f"{'long' if long else 'short'} {c} {k}"
            answers.append((text, await b.submit(req([text]), 50 if long else 5)))
        return answers

    async def main():
        emb = TextRecorder(per_text=0.0005, per_batch=0.005)
        b = DynamicBatcher(emb, max_batch_tokens=1000, lanes=2, threads=1,
                           by_length=cut(1000) if by_length else None)
        await b.start()
        answers = await asyncio.gather(*(client(b, c) for c in range(32)))
        await b.stop()
        return emb, [a for per_client in answers for a in per_client]

    emb, answers = run(main())
    assert len(answers) == 320 and sum(len(t) for t in emb.texts) == 320
    for text, result in answers:
        assert result.dense[0].tolist() == WorkingEmbedder.row(text)
    mixed = [t for t in emb.texts if len({x.split()[0] for x in t}) > 1]
    if by_length:
        assert not mixed
    else:
        assert mixed


def test_by_length_a_request_without_texts_is_answered():
    """A request of no texts has no length: it still goes (with the oldest), and the
    worker carries on."""
    async def main():
        b = DynamicBatcher(WorkingEmbedder(per_text=0, per_batch=0), max_batch_tokens=100,
                           by_length=cut(100))
        await b.start()
        empty = await asyncio.wait_for(b.submit(req([]), 0), 10)
        after = await asyncio.wait_for(b.submit(req(["after"]), 5), 10)
        await b.stop()
        return empty, after

    empty, after = run(main())
    assert len(empty.dense) == 0 and after.dense[0].tolist() == WorkingEmbedder.row("after")


def test_by_length_cuts_among_the_oldest_waiting_texts_only(monkeypatch):
    """The cut sees the oldest ``BY_LENGTH_POOL_TEXTS`` texts (it runs on the event loop):
    a long request among short ones within that pool goes alone, though long ones wait
    beyond it."""
    from hybridembed.service import batcher

    monkeypatch.setattr(batcher, "BY_LENGTH_POOL_TEXTS", 4)
    jobs = ([(req(["L0"]), 50)] + [(req([f"s{i}"]), 5) for i in range(3)]
            + [(req([f"L{i}"]), 50) for i in range(1, 6)])
    emb = RecordingEmbedder()
    run(_behind_a_held_batch(emb, DynamicBatcher(emb, max_batch_tokens=1000,
                                                 by_length=cut(1000)), jobs))
    assert emb.calls[1] == ["L0"] and emb.calls[2] == ["s0", "s1", "s2"]


def test_by_length_stopping_answers_every_request():
    """Stopping while lanes take batches by length: every request gets its rows or the
    shutdown error (none taken off the queue and left unanswered), and no batch starts
    after the stop."""
    async def main():
        emb = WorkingEmbedder(per_text=0, per_batch=0.02)
        b = DynamicBatcher(emb, max_batch_tokens=40, lanes=2, threads=1, by_length=cut(40))
        await b.start()
        futures = [b.enqueue(req([f"t{i}" + "x" * (i % 3)]), 4 + 4 * (i % 3))
                   for i in range(40)]
        await asyncio.sleep(0.05)
        await b.stop()
        calls = len(emb.calls)
        await asyncio.sleep(0.1)
        return futures, calls, len(emb.calls)

    futures, calls_at_stop, calls_later = run(main())
    assert all(f.done() for f in futures) and calls_later == calls_at_stop
    outcomes = [f.exception() or f.result() for f in futures]
    assert any(isinstance(o, EmbedResult) for o in outcomes)
    assert any(isinstance(o, RuntimeError) and "shutting down" in str(o) for o in outcomes)


def test_by_length_a_request_over_the_budget_runs_alone_as_in_queue_order():
    """Requests of many texts each: by length, a batch still keeps within the token budget
    (the oldest request always in it), so two large requests of near mean lengths are not
    merged into one lane's batch."""
    a = req([f"a{i}" for i in range(12)])
    b_ = req([f"b{i}" for i in range(12)])
    emb = RecordingEmbedder()
    run(_behind_a_held_batch(emb, DynamicBatcher(emb, max_batch_tokens=100, by_length=cut(100)),
                             [(a, 120), (b_, 132)]))
    assert emb.calls[1:] == [list(a.texts), list(b_.texts)]
