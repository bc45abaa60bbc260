"""The exactly-once study (issue 15): the same stream and the same three SIGKILLs under each
``STREAMDL_PROCESSING_GUARANTEE``, read back with a ``read_committed`` consumer (what a transactional
consumer of ``predictions`` sees) and a ``read_uncommitted`` one (every message the worker sent).

Each run first processes a backlog with no fault (the throughput of the mode), then the rest of the
stream arrives at a steady rate while the worker is killed three times at random moments and restarted.
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

pytestmark = pytest.mark.faults

BACKLOG = 1_500
"""Images waiting before the worker starts: the fault-free throughput of the mode."""
COUNT = 4_000
"""Images in all; the 2,500 after the backlog arrive at ``RATE`` while the worker is killed."""
RATE = 80.0


def duplicates(messages: list) -> int:
    """Messages beyond the first of each (key, model version): what a consumer has to drop."""
    import json

    seen = Counter((m.key(), json.loads(m.value()).get("model_version")) for m in messages)
    return sum(seen.values()) - len(seen)


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
        bases: list[int | None] = []
        outputs_at: list[int | None] = []
        rest = COUNT - BACKLOG
        for point in sorted(BACKLOG + int(rng.uniform(0.1, 0.85) * rest) for _ in range(3)):
            monitor.wait_committed(max(point, monitor.committed() + 1), timeout=180, alive=run.alive)
            time.sleep(rng.uniform(0.0, 1.0))
            run.alive()
            kills.append(monitor.now())
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait(10)
            stopped = monitor.sample()  # what the dead worker left
            bases.append(stopped.committed)
            outputs_at.append(stopped.outputs)
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
        f"killed at {', '.join(f'{c:,}' for c in bases)} committed",
    )
    report(fault_results, r)
    assert all(c is not None and c < COUNT for c in bases), f"a kill came after the stream was done ({bases})"
    assert_accounted(acc, plan)
    if mode == "exactly_once":  # what the setting promises (docs/operations.md, the exactly-once study)
        assert dups == 0 and acc.redeliveries == 0, f"read_committed saw {dups} duplicated predictions"
