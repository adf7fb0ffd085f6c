"""One OpenMP team per process: every multi-threaded torch call runs on one thread,
whichever thread asks, so libgomp never has more workers than CPUs."""

import functools
import json
import os
import subprocess
import sys
import threading
import time
import weakref

import pytest
import torch

from hybridembed.runtimes import prepacked
from hybridembed.runtimes.openmp import run_threaded


def _from_new_thread(fn):
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_threaded_calls_share_one_thread_and_single_threaded_ones_stay_put():
    def here():
        return threading.current_thread()

    shared = {_from_new_thread(lambda: run_threaded(2, here)) for _ in range(3)}
    assert len(shared) == 1 and next(iter(shared)) is not threading.current_thread()
    assert run_threaded(1, here) is threading.current_thread()
    # from the shared thread itself: at once, not queued behind itself
    assert run_threaded(2, lambda: run_threaded(4, here)) in shared


def test_an_exception_reaches_the_caller():
    def fails():
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        run_threaded(2, fails)
    assert run_threaded(2, lambda: 7) == 7  # the thread survives it


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_the_shared_thread_keeps_nothing_of_a_finished_call():
    # A server that unloads a model frees its weights at once: waiting for its next job,
    # the thread holds no reference to the last call's function (a model's bound
    # method) or arguments.
    class Model:
        def forward(self, rows):
            return len(rows)

    model = Model()
    gone = weakref.ref(model)
    assert _from_new_thread(functools.partial(run_threaded, 2, model.forward, [1, 2])) == 2
    del model
    deadline = time.monotonic() + 10  # the thread drops the job just after answering
    while gone() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone() is None


def test_a_forked_child_gets_its_own_thread():
    run_threaded(2, lambda: None)  # the parent's thread exists
    pid = os.fork()
    if pid == 0:  # child: the parent's thread is gone; a call must not wait for it
        os._exit(run_threaded(2, lambda: 42))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 42


def test_torch_forward_passes_from_many_threads_start_one_team(tiny_m3, monkeypatch):
    """Each forward pass with more than one thread runs on the shared thread; with one
    thread (the server's lanes) on the caller's."""
    import torch

    runtime = tiny_m3._runtime
    seen = []
    original = type(runtime)._forward

    def spy(self, *args):
        seen.append((threading.current_thread(), torch.get_num_threads()))
        return original(self, *args)

    monkeypatch.setattr(type(runtime), "_forward", spy)
    monkeypatch.setattr(runtime, "threads", 2)
    for _ in range(3):
        _from_new_thread(lambda: tiny_m3.embed(["a text", "another text"]))
    assert len({t for t, _ in seen}) == 1 and {n for _, n in seen} == {2}
    seen.clear()
    request = tiny_m3.request(["a text"])
    lane = _from_new_thread(lambda: (tiny_m3.run(request, threads=1),
                                     threading.current_thread())[1])
    assert seen == [(lane, 1)]


def test_threads_still_embedding_after_the_main_thread_returned(tmp_path):
    """A ThreadPoolExecutor refuses work once the main thread has returned; worker
    threads of a program may still be embedding then."""
    import subprocess
    import sys

    script = tmp_path / "late.py"
    script.write_text(
        "import threading, time\n"
        "from hybridembed.runtimes.openmp import run_threaded\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    print(run_threaded(2, lambda: 6 * 7), flush=True)\n"
        "threading.Thread(target=late).start()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_the_cross_encoder_runs_with_its_callers_thread_count(tiny_ce_dir, monkeypatch):
    import torch

    from hybridembed.rerank import CrossEncoderReranker

    reranker = CrossEncoderReranker(str(tiny_ce_dir), device="cpu")
    seen = []
    original = CrossEncoderReranker._logits

    def spy(self, inputs):
        out = original(self, inputs)
        seen.append((threading.current_thread(), torch.get_num_threads()))
        return out

    monkeypatch.setattr(CrossEncoderReranker, "_logits", spy)

    def rerank_with(threads):
        def call():
            torch.set_num_threads(threads)
            reranker.score("a query", ["a text", "another text"])
            return threading.current_thread()
        return call

    caller = _from_new_thread(rerank_with(1))
    assert seen == [(caller, 1)]
    seen.clear()
    _from_new_thread(rerank_with(2))
    _from_new_thread(rerank_with(2))
    assert len({t for t, _ in seen}) == 1 and {n for _, n in seen} == {2}
    assert caller not in {t for t, _ in seen}


def test_a_process_exiting_during_a_torch_call_exits_cleanly(tmp_path):
    """A process that ends while the shared thread is inside torch (a migration stopped
    with Ctrl-C mid forward pass: the main thread, waiting for the call, gets
    KeyboardInterrupt) waits for that call instead of aborting ("terminate called without
    an active exception", status 134); a call made after that, from an exit handler,
    still runs. The caller is the main thread, as in the CLI: a daemon thread of the
    script's own still waiting would race Python's finalisation by itself."""
    import subprocess
    import sys

    body = ("import atexit, os, signal, threading\n"
            "import torch\n"
            "from hybridembed.runtimes.openmp import run_threaded, torch_call\n"
            "{handler}"
            "a = torch.randn(600, 600)\n"
            "def many():\n"
            "    for _ in range(300):\n"
            "        a @ a\n"
            "    print('done', flush=True)\n"
            "threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
            "try:\n"
            "    torch_call(2, many)\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n")
    handler = "atexit.register(lambda: print('after', run_threaded(2, lambda: 42), flush=True))\n"
    for name, extra, printed in (("exiting.py", "", ["interrupted", "done"]),
                                 ("handler.py", handler, ["interrupted", "done", "after", "42"])):
        script = tmp_path / name
        script.write_text(body.format(handler=extra))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert "terminate called" not in out.stderr
        assert out.stdout.split() == printed


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or torch.get_num_threads() < 2,
                    reason="needs Linux's /proc and more than one torch thread")
@pytest.mark.parametrize("options", [
    {},  # sequence packing with its scripted layer stack (the activations probed)
    {"torchscript": False},
    pytest.param({"prepacked_weights": True}, marks=pytest.mark.skipif(
        not prepacked.available(), reason="this torch build has no oneDNN")),
], ids=["scripted", "eager", "prepacked"])
def test_loading_leaves_the_process_one_openmp_team(options):
    """A torch call with several threads on the loading thread (laying weights out, a
    probe) gave that thread an OpenMP team of its own; with two teams on a 2-core machine
    every worker slept between a forward pass's parallel regions and a lone text took
    twice as long. Loaded (and used) with ``options``, a fresh process has the threads it
    has with none of the loading-time work (plain modules, no packing)."""
    code = ("import json, os, sys\n"
            "from hybridembed import Embedder\n"
            "emb = Embedder('minilm', device='cpu', cache_size=0,\n"
            "               runtime_options=json.loads(sys.argv[1]))\n"
            "emb.embed(['a lone text'])\n"
            "emb.embed(['one text', 'and another, a little longer'])\n"
            "print(len(os.listdir('/proc/self/task')))\n")
    threads = {}
    for name, chosen in (("plain", {"sequence_packing": False}), ("chosen", options)):
        out = subprocess.run([sys.executable, "-c", code, json.dumps(chosen)],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert out.returncode == 0, out.stderr
        threads[name] = int(out.stdout.split()[-1])
    assert threads["chosen"] == threads["plain"], threads
