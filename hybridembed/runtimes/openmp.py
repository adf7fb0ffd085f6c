"""One thread for every multi-threaded torch call on a CPU.

torch's CPU wheels compute in parallel with libgomp, which gives every thread that starts
a parallel region a team of worker threads of its own, kept as long as that thread lives,
and counts the workers of all teams: once the process has more of them than CPUs, a
worker waits only ~100 spins after a parallel region before sleeping, instead of 300,000
(``GOMP_SPINCOUNT`` in the libgomp manual), and a forward pass, hundreds of short regions,
then wakes its workers from a futex at nearly every one. A server that warms its model up
on a loader thread and serves lone requests on a pool thread has two teams on a 2-core
machine: its workers slept 89 times per lone forward pass (measured, docs/BENCHMARKS.md).

:func:`run_threaded` runs every call that wants more than one thread on one long-lived
thread, so a process keeps one team however many threads call in. Calls with one thread
(the server's lanes, the engine's side-by-side batches) start no team and run where they
are called. :func:`torch_call` does that for a torch computation with a thread count.
An exiting process waits for the thread's current call (see :func:`_finish`).
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_jobs: queue.SimpleQueue | None = None
_thread: threading.Thread | None = None


def _serve(jobs: queue.SimpleQueue) -> None:
    while True:
        job = jobs.get()
        if job is None:  # the process is exiting (see _finish)
            return
        _run(*job)
        # Not kept while waiting for the next job: it holds the caller's function (a
        # model's bound method) and arguments, and a server that unloads that model
        # would keep its weights until some other model's next call.
        job = None


def _run(fn: Callable, args: tuple, kwargs: dict, future: Future) -> None:
    if future.set_running_or_notify_cancel():
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)


def _forget() -> None:
    """In a forked child the thread is gone: start a new one when asked."""
    global _jobs, _thread, _lock
    _jobs, _thread, _lock = None, None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)


# How long an exiting process waits for the thread's jobs: a forward pass takes seconds.
EXIT_WAIT_SECONDS = 300


def _finish() -> None:
    """At exit, let the thread finish the jobs already given to it, then end. A daemon
    thread still inside torch's C++ code when the process runs its static destructors
    aborts the process ("terminate called without an active exception", exit status 134:
    a migration stopped with Ctrl-C while a forward pass ran); waiting for one forward
    pass is the price of a clean exit."""
    with _lock:
        thread, jobs = _thread, _jobs
    if thread is not None and thread.is_alive():
        jobs.put(None)
        thread.join(EXIT_WAIT_SECONDS)


atexit.register(_finish)


def _queue() -> queue.SimpleQueue:
    global _jobs, _thread
    with _lock:
        if _thread is None or not _thread.is_alive():  # not started, or ended at exit
            # a daemon thread of our own, not a ThreadPoolExecutor: an executor refuses work
            # once the main thread has returned, while other threads may still embed
            _jobs = queue.SimpleQueue()
            _thread = threading.Thread(target=_serve, args=(_jobs,), daemon=True,
                                       name="torch-threads")
            _thread.start()
        return _jobs


def run_threaded(threads: int, fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)``, on the process's one threaded-compute thread when
    ``threads > 1`` (waiting for it; its exception is raised here), else on this thread.
    Calls from that thread itself run at once. ``fn`` must not wait for another thread
    that calls this with ``threads > 1``: that call would queue behind ``fn``."""
    if threads <= 1 or threading.current_thread() is _thread:
        return fn(*args, **kwargs)
    future: Future = Future()
    _queue().put((fn, args, kwargs, future))
    return future.result()


def torch_call(threads: int, fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` computed by torch with ``threads`` CPU threads, where
    :func:`run_threaded` puts it. torch keeps the count per thread but seeds new threads
    from a process-wide value, so it is set at every call (~0.3 us) and the thread's
    previous count put back after."""
    return run_threaded(threads, _with_torch_threads, threads, fn, *args)


def _with_torch_threads(threads: int, fn: Callable[..., T], *args) -> T:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        if before != threads:
            torch.set_num_threads(before)
