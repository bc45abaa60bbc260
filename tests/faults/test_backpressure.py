"""Backpressure: with a slow Elasticsearch (every bulk request held for 2 s by a proxy), a backlog of
large images piles up in Kafka, not in the worker. The worker's memory is sampled while the backlog
doubles: it must not grow with it (the consumer pauses its partitions instead), and the consumer lag
must grow. Then the sink is fast again, the backlog drains and every message is accounted for."""

from __future__ import annotations

import time

import numpy as np
import pytest

from streamdl.infra.process import rss_bytes
from streamdl.streams.agents.memory import inflight_limits
from tests.faults.harness import (
    Monitor,
    PacedProducer,
    SlowProxy,
    StreamPlan,
    account,
    assert_accounted,
    noise_bmp,
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


LARGE = 40
"""Images per phase of the large-image run: random-pixel BMPs of 5 to 10 MiB, ~290 MB a phase."""
BOUND = 256 * MiB
"""``max_inflight_bytes`` of the large-image run."""


def large_stream(tag: str, count: int, seed: int = 1) -> StreamPlan:
    """``count`` distinct random-pixel BMPs of 5 to 10 MiB (sides 1,300 to 1,800) with unique ids."""
    rng = np.random.default_rng(seed)
    messages = [
        (f"{tag}-{i:05d}", noise_bmp(rng, int(rng.integers(1_300, 1_800))), [("source", b"faults-large")])
        for i in range(count)
    ]
    return StreamPlan(messages, [m[0] for m in messages], [])


def test_large_images_stay_within_the_bound_in_bytes(fault_run, fault_results):
    """The same slow sink with 5-10 MiB images and ``max_inflight_bytes`` = 256 MiB: the worker's memory
    stays within the bound while more than the bound piles up in Kafka, and it drains afterwards."""
    run = fault_run
    plan = large_stream("big", 4 + 2 * LARGE)
    warmup, phase_a, phase_b = plan.messages[:4], plan.messages[4 : 4 + LARGE], plan.messages[4 + LARGE :]
    topic = run.settings.topic("images")
    own = {"max_inflight_bytes": BOUND, "max_message_bytes": 10 * MiB}
    limits = inflight_limits(run.settings.model_copy(update=own), ("images",))
    with SlowProxy(run.settings.es_url) as proxy:
        worker = run.worker(es_url=proxy.url, **own)
        monitor = Monitor(run.settings, rss_of=lambda: rss_bytes(worker.proc.pid) if worker.alive else 0)
        monitor.start()
        try:
            PacedProducer(run.settings, topic, warmup, None).run()
            monitor.wait_outputs(len(warmup), timeout=120, alive=run.alive)
            time.sleep(2)
            baseline = max(s.rss for s in monitor.samples[-4:])
            proxy.delay = 4.0  # under 1 image/s gets through
            t_a = monitor.now()
            PacedProducer(run.settings, topic, phase_a, None).run()
            time.sleep(HOLD)
            run.alive()
            PacedProducer(run.settings, topic, phase_b, None).run()
            time.sleep(HOLD)
            run.alive()
            t_end = monitor.now()
            proxy.delay = 0.0
            acc = account(run.settings, plan, monitor, alive=run.alive)
            t_drained = monitor.now()
        finally:
            monitor.stop()
    peak = max(s.rss for s in monitor.samples if t_a <= s.t <= t_drained)
    mb_in = sum(len(m[1]) for m in phase_a + phase_b) / MiB
    max_lag = monitor.max_lag(since=t_a)
    backlog_mb = max_lag * mb_in / (2 * LARGE)
    drain_secs = t_drained - t_end
    r = row(
        "backpressure-large",
        f"ES slowed (4 s per bulk) while 2 x {LARGE} images of 5-10 MiB arrive; max_inflight_bytes 256 MiB",
        acc,
        f"drained in {seconds([drain_secs])}",
        f"worker RSS {baseline / MiB:.0f} MiB before, peak {peak / MiB:.0f} MiB (+{(peak - baseline) / MiB:.0f}) "
        f"while {mb_in:.0f} MB arrived; max consumer lag {max_lag} (~{backlog_mb:.0f} MB waiting in Kafka); "
        f"limits: fetch {limits.fetch_bytes // MiB} MiB/partition, buffer {limits.buffer_messages}, batch "
        f"{limits.batch_size['images']}, bound {limits.bound / MiB:.0f} MiB; "
        f"drained at {backlog_mb / drain_secs:.0f} MB/s",
    )
    report(fault_results, r)
    print(
        "t (s), worker RSS (MiB), lag:", "; ".join(f"{s.t:.0f} {s.rss / MiB:.0f} {s.lag}" for s in monitor.samples[::4])
    )
    assert limits.bound <= BOUND
    # More than the worker may hold waited in Kafka: a worker that took it in would have broken the bound.
    assert backlog_mb * MiB > limits.bound, (max_lag, backlog_mb)
    # The worker held at most the bound of messages; RSS may add one working copy of them (aiokafka's fetch
    # buffer beside the parsed records, a batch decoded): the growth stays under twice the bound.
    assert peak - baseline < 2 * BOUND, (baseline / MiB, peak / MiB)
    assert_accounted(acc, plan)
