"""One retry policy for every loop that waits out a failure (bulk indexing, webhook deliveries,
archive writes, the agents' batch retries): exponential backoff with a cap, and a wait that a
shutdown interrupts.

The loops keep their own control flow (the bulk loop re-sends only the failed items, the webhook
honours ``Retry-After``, the agent's wait is asyncio), which is why this is a policy object and not a
retrying decorator such as tenacity's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Waits of ``first``, ``first * factor``, ... seconds, each at most ``max_delay``; ``attempts`` tries in all
    (``None``: as many as it takes)."""

    first: float
    max_delay: float
    factor: float = 2.0
    attempts: int | None = None

    def __post_init__(self) -> None:
        if self.first < 0 or self.max_delay < 0 or self.factor < 1:
            raise ValueError(f"backoff needs first >= 0, max_delay >= 0 and factor >= 1. Received: {self!r}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1. Received: attempts={self.attempts}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        return min(self.max_delay, self.first * self.factor ** (attempt - 1))

    def exhausted(self, attempt: int) -> bool:
        """Whether try number ``attempt`` was the last one allowed."""
        return self.attempts is not None and attempt >= self.attempts


def sleep(seconds: float, stop: Callable[[], bool] = lambda: False, tick: float = 0.2) -> bool:
    """Wait ``seconds``, waking every ``tick`` to ask ``stop()``; ``True`` when stopped before the end."""
    resume = time.monotonic() + seconds
    while not stop():
        left = resume - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(tick, left))
    return True
