"""A bound on the worker's shutdown: after SIGTERM the process exits within ``drain_secs +
shutdown_grace_secs`` whatever the services do.

The agents' drain (:func:`~streamdl.streams.agents.micro_batch.drain`) is bounded, but closing the
Kafka clients is not: with the broker gone for good, aiokafka's last commit, leave-group and producer
flush wait on a broker that never answers, and SIGTERM hung until SIGKILL. When the bound passes, the
watchdog logs what was not committed (it is redelivered to the next owner of the partitions: nothing is
lost) and ends the process with :data:`EXIT_SHUTDOWN_FORCED`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable

import faust

from streamdl.streams.agents.faust_adapter import committed_offsets, unacked_messages

logger = logging.getLogger(__name__)

EXIT_SHUTDOWN_FORCED = 75
"""EX_TEMPFAIL: the worker stopped without finishing its shutdown; what it held uncommitted is redelivered."""


def uncommitted(app: faust.App) -> str:
    """What the worker holds and has not committed, per partition: ``topic-p: committed up to N, K in hand``."""
    try:
        consumer = app.consumer
        in_hand = Counter(f"{m.topic}-{m.partition}" for m in unacked_messages(consumer))
        committed = committed_offsets(consumer)
    except Exception as exc:  # noqa: BLE001 - read from another thread while the consumer closes: say so
        return f"unknown ({type(exc).__name__}: {exc})"
    parts = sorted(set(in_hand) | set(committed))
    if not parts:
        return "no partition assigned"
    return "; ".join(f"{p}: committed up to {committed.get(p)}, {in_hand.get(p, 0)} in hand" for p in parts)


class ShutdownWatchdog:
    """Once :meth:`start` ed, ends the process after ``limit`` seconds unless :meth:`cancel` led first."""

    def __init__(self, limit: float, describe: Callable[[], str], exit: Callable[[int], None] = os._exit) -> None:
        self.limit, self.describe, self._exit = limit, describe, exit
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Called when the shutdown begins (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="shutdown-watchdog", daemon=True)
            self._thread.start()

    def cancel(self) -> None:
        """Called when the shutdown finished by itself."""
        self._done.set()

    def _watch(self) -> None:
        if self._done.wait(self.limit):
            return
        logger.error(
            "shutdown did not finish within %.0fs (a service, e.g. the Kafka broker, does not answer); exiting "
            "with %d without committing what is left, which will be redelivered. Not committed: %s",
            self.limit,
            EXIT_SHUTDOWN_FORCED,
            self.describe(),
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(EXIT_SHUTDOWN_FORCED)


class BoundedWorker(faust.Worker):
    """A Faust worker whose shutdown (SIGTERM, SIGINT) takes at most ``shutdown_limit`` seconds."""

    def __init__(self, app: faust.App, *, shutdown_limit: float, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self.watchdog = ShutdownWatchdog(shutdown_limit, lambda: uncommitted(app))

    async def on_stop(self) -> None:
        """mode's hook, called first when the worker stops."""
        self.watchdog.start()
        await super().on_stop()
