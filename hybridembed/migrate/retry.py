"""Retrying a database step through transient failures (a restart, a dropped
connection, a deadlock, a serialization failure) with jittered exponential backoff.
A cancelled statement (``QueryCanceled``: ``pg_cancel_backend``, ``statement_timeout``)
is not transient: someone asked it to stop, so it propagates."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = ("OperationalError", "InterfaceError", "AdminShutdown", "SerializationFailure",
             "DeadlockDetected", "CannotConnectNow", "ConnectionTimeout", "ConnectionFailure",
             "CrashShutdown")


def is_transient(exc: BaseException) -> bool:
    return type(exc).__name__ in TRANSIENT


def retrying(what: str, fn: Callable[[], T], max_retries: int,
             on_retry: Callable[[], Any] | None = None) -> T:
    """``fn()``, called again after a transient error up to ``max_retries`` times (waits
    0.2 s doubling to 10 s, each times 1-2 at random); other errors, and the last
    transient one, propagate."""
    delay = 0.2
    for attempt in range(max_retries + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt == max_retries:
                raise
            if on_retry:
                on_retry()
            wait = delay * (1 + random.random())
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.warning("%s failed (%s: %s); retry %d in %.1f s", what, type(exc).__name__,
                        first, attempt + 1, wait)
            time.sleep(wait)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")
