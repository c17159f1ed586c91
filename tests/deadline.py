"""Run a call that must not hang (a FIFO opened, a read that blocks) under a deadline."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def within(seconds: float, call: Callable[[], T], blocked: str) -> T:
    """``call()`` in a daemon thread: its result or its exception; a call still running after
    ``seconds`` fails the test with ``blocked`` instead of blocking the suite."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), blocked
    if failure:
        raise failure[0]
    return outcome[0]
