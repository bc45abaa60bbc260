"""The shutdown bound: the watchdog ends the process after its limit unless the shutdown finished first."""

from __future__ import annotations

import logging
import threading

from streamdl.streams.agents.shutdown import EXIT_SHUTDOWN_FORCED, ShutdownWatchdog


def test_a_shutdown_past_its_bound_exits_saying_what_was_not_committed(caplog):
    exited = threading.Event()
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    watchdog = ShutdownWatchdog(0.2, lambda: "t-0: committed up to 41, 7 in hand", exit=fake_exit)
    with caplog.at_level(logging.ERROR, logger="streamdl.streams.agents.shutdown"):
        watchdog.start()
        assert exited.wait(5)
    assert codes == [EXIT_SHUTDOWN_FORCED]
    assert "Not committed: t-0: committed up to 41, 7 in hand" in caplog.text


def test_a_shutdown_that_finishes_in_time_is_left_alone():
    codes: list[int] = []
    watchdog = ShutdownWatchdog(0.3, lambda: "", exit=codes.append)
    watchdog.start()
    watchdog.cancel()
    watchdog._thread.join(2)
    assert not watchdog._thread.is_alive() and codes == []
