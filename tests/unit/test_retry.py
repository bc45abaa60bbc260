"""The one retry policy."""

from __future__ import annotations

import threading

import pytest

from streamdl.retry import Backoff, sleep


def test_delays_grow_and_are_capped():
    policy = Backoff(first=0.2, max_delay=1.0)
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])


def test_attempts_bound_the_tries():
    assert not Backoff(1, 1).exhausted(10_000)
    assert [Backoff(1, 1, attempts=3).exhausted(n) for n in (1, 2, 3)] == [False, False, True]
    with pytest.raises(ValueError, match="attempts=0"):
        Backoff(1, 1, attempts=0)


def test_a_stop_interrupts_the_wait():
    stopped = threading.Event()
    threading.Timer(0.05, stopped.set).start()
    assert sleep(30, stopped.is_set, tick=0.01) is True
    assert sleep(0.01, lambda: False) is False
