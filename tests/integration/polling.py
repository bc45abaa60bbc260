"""Waiting on a running stack: poll a condition, fail naming what did not happen (and a dead process's log)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def wait(what: str, condition: Callable[[], Any], timeout: float = 180.0, alive: Sequence[Any] = ()) -> None:
    """Poll ``condition`` every half second until it holds; fail after ``timeout`` seconds, or at once when a
    process of ``alive`` (a :class:`~streamdl.streams.agents.worker_process.WorkerProcess`) died."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in alive:
            assert process.alive, process.tail()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
