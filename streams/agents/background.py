"""The worker's helper threads (model follower, lag monitor): a daemon thread that runs until stopped."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Self


class DaemonLoop(ABC):
    """Runs :meth:`_run` on a daemon thread named ``thread_name``; :meth:`_run` returns once ``self._stop`` is set."""

    thread_name: str = "background"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end and wait for it (at most ``timeout`` seconds)."""
        self._stop.set()
        self._thread.join(timeout=timeout)

    @abstractmethod
    def _run(self) -> None:
        """The loop; must check ``self._stop`` regularly."""
