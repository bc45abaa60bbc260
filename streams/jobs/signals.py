"""Graceful stops for the long-running commands that are not Faust workers (archiver, webhook sink)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def graceful_stop(on_signal: Callable[[int], None] = lambda signum: None) -> Iterator[threading.Event]:
    """An event the first SIGINT or SIGTERM sets (after calling ``on_signal``); a second signal gets
    the previous handler again (Ctrl-C twice interrupts). Handlers are restored when the block ends.
    Off the main thread, where signals cannot be handled, the event is only set by its owner."""
    stop = threading.Event()
    restore: dict[int, object] = {}

    def graceful(signum, frame) -> None:
        on_signal(signum)
        stop.set()
        for sig, handler in restore.items():
            signal.signal(sig, handler)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore[sig] = signal.signal(sig, graceful)
    try:
        yield stop
    finally:
        for sig, handler in restore.items():
            signal.signal(sig, handler)
