"""Faults of the worker itself: killed with SIGKILL and restarted, stopped with SIGTERM, and a second
worker joining and leaving the group (partition rebalance). Every message is accounted for by id."""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.faults.harness import account, assert_accounted, report, row, seconds

pytestmark = pytest.mark.faults

COUNT = 5_400
"""Images per test: the 1,797 digits three times over with unique ids (12 of them truncated: dead letters)."""
RATE = 100.0
"""Images per second the producer sends (the stream lasts about a minute)."""


def processed(worker) -> float:
    """The worker's ``streamdl_images_processed_total`` (0 when it does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(worker.metrics() or ""):
        for s in family.samples:
            if s.name == "streamdl_images_processed_total":
                return s.value
    return 0.0


def test_sigkill_three_times_at_random_moments(fault_run, fault_results):
    run = fault_run
    rng = random.Random(20261121)
    worker = run.worker()
    kills: list[float] = []
    bases: list[int | None] = []
    starts: list[float] = []
    with run.streaming("kill", COUNT, RATE) as (plan, monitor, producer):
        # random moments: when the committed offsets pass three random points of the stream (and the
        # restarted worker has committed something new), plus up to a second
        for point in sorted(int(rng.uniform(0.1, 0.85) * COUNT) for _ in range(3)):
            progress = monitor.committed() + 1
            monitor.wait_committed(max(point, progress), timeout=180, alive=run.alive)
            time.sleep(rng.uniform(0.0, 1.0))
            run.alive()
            kills.append(monitor.now())
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait(10)
            bases.append(monitor.sample().outputs)  # what the dead worker left
            t = time.monotonic()
            run.restart(worker)
            starts.append(time.monotonic() - t)
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=run.alive)
    recover = [monitor.resumed_after(t, base) for t, base in zip(kills, bases)]
    at = bases
    r = row(
        "sigkill",
        "worker SIGKILLed 3x at random moments, restarted",
        acc,
        seconds(recover),
        f"killed at {', '.join(f'{o:,}' for o in at)} outputs; restart (process up) {seconds(starts)}",
    )
    report(fault_results, r)
    assert all(o < COUNT for o in at), f"a kill came after the stream was done (outputs at each kill: {at})"
    assert_accounted(acc, plan)


def test_sigterm_finishes_the_batch_commits_and_exits(fault_run, fault_results):
    run = fault_run
    worker = run.worker()
    with run.streaming("term", COUNT, RATE) as (plan, monitor, producer):
        monitor.wait_outputs(2_000, timeout=180, alive=run.alive)
        t = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        code = worker.proc.wait(60)
        took = time.monotonic() - t
        t_exit = monitor.now()
        stopped = monitor.sample()  # outputs and committed offsets as the worker left them
        run.restart(worker)
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=run.alive)
    r = row(
        "sigterm",
        "worker SIGTERMed mid-stream, restarted",
        acc,
        seconds([monitor.resumed_after(t_exit, stopped.outputs)]),
        f"exit {code} in {took:.1f} s; at exit {stopped.outputs:,} outputs, {stopped.committed:,} committed",
    )
    report(fault_results, r)
    assert code == 0, worker.tail(60)
    assert took < 30, f"SIGTERM took {took:.1f}s"
    # Every message with an output was committed, and nothing was committed without an output:
    assert stopped.committed == stopped.outputs, (stopped.committed, stopped.outputs)
    assert_accounted(acc, plan)
    assert acc.redeliveries == 0


def test_a_second_worker_joins_and_leaves(fault_run, fault_results):
    run = fault_run
    first = run.worker("worker-1")
    with run.streaming("rebalance", COUNT, RATE) as (plan, monitor, producer):
        monitor.wait_outputs(1_200, timeout=180, alive=run.alive)
        second = run.worker("worker-2")
        t_join = monitor.now()
        monitor.wait_outputs(monitor.outputs() + 1_500, timeout=180, alive=lambda: run.alive(first, second))
        by_second = processed(second)
        t_leave = monitor.now()
        code = second.stop(timeout=60)
        t_left = monitor.now()
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=lambda: run.alive(first))
    r = row(
        "rebalance",
        "2nd worker joins, then leaves (SIGTERM)",
        acc,
        "longest stall "
        + seconds([monitor.longest_stall(t_join - 2, t_join + 15), monitor.longest_stall(t_leave, t_left + 15)]),
        f"worker-2 processed {by_second:,.0f} while in the group; left with exit {code} in {t_left - t_leave:.1f} s",
    )
    report(fault_results, r)
    assert by_second > 0, "the second worker got no partition"
    assert code == 0
    assert_accounted(acc, plan)
