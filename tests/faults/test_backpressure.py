"""Backpressure: with a slow Elasticsearch (every bulk request held for 2 s by a proxy), a backlog of
large images piles up in Kafka, not in the worker. The worker's memory is sampled while the backlog
doubles: it must not grow with it (the consumer pauses its partitions instead), and the consumer lag
must grow. Then the sink is fast again, the backlog drains and every message is accounted for."""

from __future__ import annotations

import time

import pytest

from streamdl.infra.process import rss_bytes
from tests.faults.harness import (
    Monitor,
    PacedProducer,
    SlowProxy,
    account,
    assert_accounted,
    noise_stream,
    report,
    row,
    seconds,
)

pytestmark = pytest.mark.faults

WARMUP = 256
PHASE = 2_600
"""Images per phase; two phases. Each image is a ~64 KiB random-pixel BMP, so a phase is ~170 MB."""
HOLD = 12.0
"""Seconds each phase is watched after its images are in Kafka."""
MiB = 2**20


def test_a_slow_sink_does_not_grow_the_workers_memory(fault_run, fault_results):
    run = fault_run
    plan = noise_stream("bp", WARMUP + 2 * PHASE)
    warmup, phase_a, phase_b = (
        plan.messages[:WARMUP],
        plan.messages[WARMUP : WARMUP + PHASE],
        plan.messages[WARMUP + PHASE :],
    )
    topic = run.settings.topic("images")
    with SlowProxy(run.settings.es_url) as proxy:
        worker = run.worker(es_url=proxy.url)
        monitor = Monitor(run.settings, rss_of=lambda: rss_bytes(worker.proc.pid) if worker.alive else 0)
        monitor.start()
        try:
            PacedProducer(run.settings, topic, warmup, None).run()
            monitor.wait_outputs(WARMUP, timeout=120, alive=run.alive)
            time.sleep(2)
            baseline = max(s.rss for s in monitor.samples[-4:])
            proxy.delay = 2.0  # the sink slows down: ~32 images/s get through
            t_a = monitor.now()
            PacedProducer(run.settings, topic, phase_a, None).run()
            time.sleep(HOLD)
            run.alive()
            t_b = monitor.now()
            PacedProducer(run.settings, topic, phase_b, None).run()
            time.sleep(HOLD)
            run.alive()
            t_end = monitor.now()
            proxy.delay = 0.0
            acc = account(run.settings, plan, monitor, alive=run.alive)
            t_drained = monitor.now()
        finally:
            monitor.stop()

    def window(t0: float, t1: float):
        return [s for s in monitor.samples if t0 <= s.t < t1]

    peak_a = max(s.rss for s in window(t_a, t_b))
    peak_b = max(s.rss for s in window(t_b, t_end))
    lag_a = next(s.lag for s in reversed(window(t_a, t_b)) if s.lag is not None)
    lag_b = next(s.lag for s in reversed(window(t_b, t_end)) if s.lag is not None)
    mb_a, mb_b = sum(len(m[1]) for m in phase_a) / MiB, sum(len(m[1]) for m in phase_b) / MiB
    backlog_mb = lag_b * (mb_b / PHASE)
    r = row(
        "backpressure",
        "ES slowed (2 s per bulk) while 2 x 2,600 large images (~64 KiB) arrive",
        acc,
        f"drained in {seconds([t_drained - t_end])}",
        f"worker RSS {baseline / MiB:.0f} MiB before, peak {peak_a / MiB:.0f} MiB after {mb_a:.0f} MB in, "
        f"{peak_b / MiB:.0f} MiB after {mb_a + mb_b:.0f} MB in; consumer lag {lag_a:,} then {lag_b:,} "
        f"(~{backlog_mb:.0f} MB waiting in Kafka)",
    )
    report(fault_results, r)
    print(
        "t (s), worker RSS (MiB), consumer lag:",
        "; ".join(f"{s.t:.0f} {s.rss / MiB:.0f} {s.lag}" for s in monitor.samples[::4]),
    )
    # The backlog grew by most of phase B: the worker did not take it in...
    assert lag_b > lag_a + PHASE // 2, (lag_a, lag_b)
    # ... and its memory did not grow with it. A consumer that took in what arrived would have grown by
    # phase B's ~163 MB (and held the whole ~280 MB backlog); the peak may move by less than half of that
    # (allocator noise: single samples vary by tens of MiB).
    assert (peak_b - peak_a) / MiB < 0.5 * mb_b, (peak_a / MiB, peak_b / MiB, mb_b)
    assert (peak_b - baseline) / MiB < 0.75 * backlog_mb, (baseline / MiB, peak_b / MiB, backlog_mb)
    assert_accounted(acc, plan)
