"""SIGTERM when the Kafka broker is gone for good: the worker must not wait for it. It exits within its
shutdown bound (``drain_secs + shutdown_grace_secs``), saying what it did not commit; what it did not commit
is redelivered once a broker is back, so nothing is lost."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from streamdl.streams.agents.shutdown import EXIT_SHUTDOWN_FORCED
from tests.faults.harness import account, assert_accounted, recovery, report, row

pytestmark = pytest.mark.faults

COUNT = 5_400
RATE = 100.0
MARGIN = 15.0
"""Seconds allowed past the bound: the signal's delivery, the watchdog's log line, the process's exit."""


def test_sigterm_with_the_broker_gone_for_good_exits_within_its_bound(fault_run, fault_results):
    run = fault_run
    worker = run.worker()
    bound = run.settings.drain_secs + run.settings.shutdown_grace_secs
    with run.streaming("gone", COUNT, RATE) as (plan, monitor, producer):
        monitor.wait_outputs(1_500, timeout=180, alive=run.alive)
        run.stack.stop("kafka")  # not started again until the worker is gone
        time.sleep(5)
        t = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        try:
            code = worker.proc.wait(bound + 60)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t
        log = worker.tail(400)
        run.stack.start()
        t_back = monitor.now()
        run.restart(worker)
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=run.alive)
    said = next((line for line in log.splitlines() if "Not committed:" in line), "")
    r = row(
        "sigterm-kafka-gone",
        "Kafka stopped for good, then the worker SIGTERMed (restarted once Kafka was back)",
        acc,
        recovery(monitor, t_back, 2 * run.settings.max_batch_size),
        f"exit {code} in {took:.1f} s (bound drain {run.settings.drain_secs:.0f} s + grace "
        f"{run.settings.shutdown_grace_secs:.0f} s); logged: {said.split('Not committed:')[-1].strip()[:200]}",
    )
    report(fault_results, r)
    assert code is not None and took < bound + MARGIN, (code, took, log[-3000:])
    assert code in (0, EXIT_SHUTDOWN_FORCED), log[-3000:]
    if code == EXIT_SHUTDOWN_FORCED:
        assert said, "a forced exit must say what was not committed"
    assert_accounted(acc, plan)
