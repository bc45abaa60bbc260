"""Outages of the services under a running stream: the Kafka broker stopped for 20 s, Elasticsearch
stopped for 30 s. The worker must outlive both, pause instead of dropping or skipping, and catch up.
And a SIGTERM during an outage must still stop the worker in bounded time, committing nothing unwritten."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.faults.harness import account, assert_accounted, recovery, report, row, seconds

pytestmark = pytest.mark.faults

COUNT = 5_400
RATE = 100.0


def test_kafka_broker_stopped_for_20_seconds(fault_run, fault_results):
    run = fault_run
    worker = run.worker()
    with run.streaming("kafka", COUNT, RATE) as (plan, monitor, producer):
        monitor.wait_outputs(1_500, timeout=180, alive=run.alive)
        t_stop = monitor.now()
        stopping = run.stack.stop("kafka")
        time.sleep(20)
        run.alive()
        starting = run.stack.start()
        t_back = monitor.now()
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=run.alive)
    r = row(
        "kafka-outage",
        "Kafka broker stopped 20 s mid-stream",
        acc,
        recovery(monitor, t_back, 2 * run.settings.max_batch_size),
        f"broker down {t_back - t_stop:.0f} s (stop {stopping:.1f} s, start {starting:.1f} s); worker stayed up; "
        f"max consumer lag {monitor.max_lag(since=t_stop):,}",
    )
    report(fault_results, r)
    print(f"monitor: {len(monitor.errors)} failed samples, the last: {monitor.errors[-1:]}")
    assert worker.alive
    assert_accounted(acc, plan)


def test_elasticsearch_stopped_for_30_seconds(fault_run, fault_results):
    run = fault_run
    worker = run.worker()
    with run.streaming("es", COUNT, RATE) as (plan, monitor, producer):
        monitor.wait_outputs(1_500, timeout=180, alive=run.alive)
        lag_before = monitor.max_lag()
        t_stop = monitor.now()
        stopping = run.stack.stop("elasticsearch")
        time.sleep(30)
        run.alive()
        during = [s for s in monitor.samples if s.t >= t_stop + stopping + 5 and s.committed is not None]
        starting = run.stack.start()
        t_back = monitor.now()
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=run.alive)
    peak = monitor.max_lag(since=t_stop)
    drained = monitor.drained_after(t_back, below=2 * run.settings.max_batch_size)
    r = row(
        "es-outage",
        "Elasticsearch stopped 30 s mid-stream",
        acc,
        recovery(monitor, t_back, 2 * run.settings.max_batch_size),
        f"ES down {t_back - t_stop:.0f} s (start {starting:.1f} s); worker paused: nothing committed while down; "
        f"consumer lag {lag_before:,} before, max {peak:,}, "
        f"back to <= {2 * run.settings.max_batch_size} {seconds([drained])} after ES was back",
    )
    report(fault_results, r)
    assert worker.alive
    # While Elasticsearch was down nothing was committed (the worker paused) and the lag grew.
    assert during and during[0].committed == during[-1].committed, [(s.t, s.committed) for s in during]
    assert peak > lag_before + 1_000, (lag_before, peak)
    assert drained is not None
    assert_accounted(acc, plan)


def test_sigterm_while_elasticsearch_is_down_exits_in_bounded_time(fault_run, fault_results):
    """Graceful shutdown must not wait for an outage to end: the batch that cannot be written is
    given up without being committed (it is redelivered), and the worker exits."""
    run = fault_run
    worker = run.worker()
    with run.streaming("termdown", COUNT, RATE) as (plan, monitor, producer):
        monitor.wait_outputs(1_500, timeout=180, alive=run.alive)
        run.stack.stop("elasticsearch")
        time.sleep(5)
        t = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        try:
            code = worker.proc.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t
        stopped = monitor.sample()
        run.stack.start()
        t_back = monitor.now()
        run.restart(worker)
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=run.alive)
    r = row(
        "sigterm-es-down",
        "worker SIGTERMed while Elasticsearch is down, restarted after",
        acc,
        recovery(monitor, t_back, 2 * run.settings.max_batch_size),
        f"exit {code} in {took:.1f} s; at exit {stopped.outputs:,} outputs, {stopped.committed:,} committed",
    )
    report(fault_results, r)
    assert code == 0 and took < 30, (code, took, worker.tail(60))
    assert stopped.committed <= stopped.outputs, "offsets were committed for messages without output"
    assert_accounted(acc, plan)
