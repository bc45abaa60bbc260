"""The exactly-once study (issue 15): the same stream and the same three SIGKILLs under each
``STREAMDL_PROCESSING_GUARANTEE``, read back with a ``read_committed`` consumer (what a transactional
consumer of ``predictions`` sees) and a ``read_uncommitted`` one (every message the worker sent).

Each run first processes a backlog with no fault (the throughput of the mode), then the rest of the
stream arrives at a steady rate while the worker is killed three times at random moments and restarted;
with ``exactly_once`` each kill waits (at most 10 s) until a transaction holds predictions not committed
yet, so that the kills test the aborts, not only the quiet moments between two batches.
Both modes must keep what the product guarantees (nothing lost, one document per id); the duplicates a
``read_committed`` consumer sees (same id and model version) are the study's measurement, and must be
none with ``exactly_once``.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter

import pytest

from tests.faults.harness import (
    Monitor,
    PacedProducer,
    account,
    assert_accounted,
    digit_stream,
    read_all,
    report,
    row,
    seconds,
)
from tests.faults.test_worker_faults import processed

pytestmark = pytest.mark.faults

BACKLOG = 1_500
"""Images waiting before the worker starts: the fault-free throughput of the mode."""
COUNT = 4_000
"""Images in all; the 2,500 after the backlog arrive at ``RATE`` (about 40 s) while the worker is killed."""
RATE = 60.0


def duplicates(messages: list) -> int:
    """Messages beyond the first of each (key, model version): what a consumer has to drop."""
    import json

    seen = Counter((m.key(), json.loads(m.value()).get("model_version")) for m in messages)
    return sum(seen.values()) - len(seen)


def open_transaction(admin, settings, topic: str) -> bool:
    """Whether ``topic`` holds messages of a transaction not committed yet (its last stable offset is behind
    its end on some partition)."""
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    latest = {TopicPartition(topic, p): OffsetSpec.latest() for p in range(settings.topic_partitions)}
    stable = admin.list_offsets(latest, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=5)
    end = admin.list_offsets(latest, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=5)
    return any(stable[tp].result().offset < end[tp].result().offset for tp in latest)


def wait_open_transaction(settings, topic: str, timeout: float = 10.0) -> bool:
    """Wait until :func:`open_transaction`; ``False`` when it did not happen within ``timeout``."""
    from streamdl.connectors.kafka_admin import admin_client

    admin = admin_client(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if open_transaction(admin, settings, topic):
            return True
    return False


def redelivered(messages: list) -> int:
    """Messages beyond the first of each key."""
    return len(messages) - len({m.key() for m in messages})


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_sigkill_three_times_read_committed(fault_run, fault_results, mode):
    run = fault_run
    rng = random.Random(20261201)
    plan = digit_stream(f"eos-{mode[:5]}", COUNT)
    topic = run.settings.topic("images")
    backlog = PacedProducer(run.settings, topic, plan.messages[:BACKLOG], None)
    backlog.start()
    backlog.finish()
    monitor = Monitor(run.settings)
    monitor.start()
    try:
        worker = run.worker(processing_guarantee=mode)
        monitor.wait_committed(BACKLOG, timeout=180, alive=run.alive)
        first = next(s.t for s in monitor.samples if s.outputs)
        throughput = BACKLOG / (monitor.now() - first)

        producer = PacedProducer(run.settings, topic, plan.messages[BACKLOG:], RATE)
        producer.start()
        kills: list[float] = []
        bases: list[int] = []
        outputs_at: list[int | None] = []
        in_transaction = 0
        rest = COUNT - BACKLOG
        for point in sorted(BACKLOG + int(rng.uniform(0.1, 0.8) * rest) for _ in range(3)):
            monitor.wait_committed(max(point, monitor.committed() + 1), timeout=180, alive=run.alive)
            time.sleep(rng.uniform(0.0, 1.0))
            if mode == "exactly_once":
                in_transaction += wait_open_transaction(run.settings, run.settings.topic("predictions"))
            run.alive()
            kills.append(monitor.now())
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait(10)
            left = monitor.sample()  # what the dead worker left (else the last good sample: the broker did not answer)
            bases.append(monitor.committed() if left.committed is None else left.committed)
            outputs_at.append(left.outputs)
            run.restart(worker)
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=run.alive)
    finally:
        monitor.stop()
    committed = read_all(run.settings, run.settings.topic("predictions"))
    everything = read_all(run.settings, run.settings.topic("predictions"), isolation="read_uncommitted")
    dead_everything = read_all(run.settings, run.settings.topic("dlq"), isolation="read_uncommitted")
    dups = duplicates(committed)
    uncommitted_redeliveries = redelivered(everything) + redelivered(dead_everything)
    r = row(
        f"eos-{mode}",
        f"worker SIGKILLed 3x, STREAMDL_PROCESSING_GUARANTEE={mode}",
        acc,
        seconds(monitor.resumed_after(t, base) for t, base in zip(kills, outputs_at)),
        f"read_committed: {len(committed):,} predictions, {dups} duplicated (id + model version), "
        f"{acc.redeliveries} re-deliveries with dead letters; read_uncommitted: {len(everything):,} predictions, "
        f"{uncommitted_redeliveries} re-deliveries; fault-free backlog of {BACKLOG:,}: {throughput:.0f} images/s; "
        f"killed at {', '.join(f'{c:,}' for c in bases)} committed"
        + (f", {in_transaction} of 3 kills inside an open transaction" if mode == "exactly_once" else ""),
    )
    report(fault_results, r)
    assert all(c < COUNT for c in bases), f"a kill came after the stream was done ({bases})"
    assert_accounted(acc, plan)
    if mode == "exactly_once":  # what the setting promises (docs/operations.md, the exactly-once study)
        assert dups == 0 and acc.redeliveries == 0, f"read_committed saw {dups} duplicated predictions"
        # the kills cut open transactions: their outputs were aborted (only a read_uncommitted reader sees them)
        assert in_transaction > 0 and uncommitted_redeliveries > 0, (in_transaction, uncommitted_redeliveries)


def test_a_second_worker_joins_and_leaves_exactly_once(fault_run, fault_results):
    """A rebalance each way under ``exactly_once``: the partitions' transactional producers change hands (and come
    back fenced: ``FaustTransactionalOutputs`` renews them); the worker stays up and nothing is lost. The duplicates
    a ``read_committed`` consumer sees are measured."""
    from tests.faults.test_worker_faults import COUNT as IMAGES
    from tests.faults.test_worker_faults import RATE as IMAGES_RATE

    run = fault_run
    first = run.worker("worker-1", processing_guarantee="exactly_once")
    with run.streaming("eos-rebalance", IMAGES, IMAGES_RATE) as (plan, monitor, producer):
        monitor.wait_outputs(1_200, timeout=180, alive=run.alive)
        second = run.worker("worker-2", processing_guarantee="exactly_once")
        monitor.wait_outputs(monitor.outputs() + 1_500, timeout=180, alive=lambda: run.alive(first, second))
        by_second = processed(second)
        code = second.stop(timeout=60)
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=lambda: run.alive(first))
    committed = read_all(run.settings, run.settings.topic("predictions"))
    everything = read_all(run.settings, run.settings.topic("predictions"), isolation="read_uncommitted")
    dups = duplicates(committed)
    r = row(
        "eos-rebalance",
        "exactly_once: 2nd worker joins, then leaves (SIGTERM)",
        acc,
        "-",
        f"worker-2 processed {by_second:,.0f} while in the group, left with exit {code}; read_committed: "
        f"{len(committed):,} predictions, {dups} duplicated; read_uncommitted: {len(everything):,} predictions, "
        f"{redelivered(everything)} re-deliveries",
    )
    report(fault_results, r)
    assert by_second > 0, "the second worker got no partition"
    assert code == 0
    assert_accounted(acc, plan)
    # Not asserted: 0 duplicates. A run saw 3 of 5,388 (docs/operations.md, the exactly-once study): across a
    # rebalance the setting is at-least-once, and consumers keep the idempotency rule.
