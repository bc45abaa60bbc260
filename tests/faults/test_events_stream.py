"""The events stream under every fault at once: >= 50,000 sensor-sample events (its injected anomalies
and a known share of invalid events) while the worker is SIGKILLed 3 times, the Kafka broker is stopped
20 s, Elasticsearch 30 s, a second worker joins and leaves, and the worker is SIGTERMed. Every event is
accounted for by id (indexed exactly once, or dead-lettered with its reason), and the set of alert ids
equals that of a fault-free pass over the same events.

Why the alert ids survive: a window's alert id is derived from event time (``rule:subject:window-start``),
and the alerts index creates each id once (``op_type=create``), so a worker that restarted with empty
throttle state, or a second worker, cannot raise a window twice nor lose one (the state that survives is
the alerts index, not the worker's memory)."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest

from tests.faults.harness import account, assert_accounted, read_all, report, row, seconds, sensor_stream

pytestmark = pytest.mark.faults

COUNT = 50_000
BAD_EVERY = 60
"""One event in 60 is invalid (833 dead letters)."""
RATE = 300.0
"""Events per second the producer sends (the stream lasts ~170 s)."""
BATCH = 256
RATE_RULES = ("dead_letter_rate",)
"""Rules judged on processing time (not event time): not deterministic, left out of the comparison."""


def fault_free_alert_ids(settings, plan) -> set[str]:
    """The alert ids of the same events scored and judged in one pass, in order, with no fault."""
    from streamdl.alert_rules import load_rules
    from streamdl.event_schema import InvalidEvent, parse_event
    from streamdl.models.event_handler import load_event_handler
    from streamdl.streams.pipelines.alerts import AlertEngine, Scored

    handler = load_event_handler(settings.event_model, settings.state_dir)
    handler.load()
    info = handler.info()
    rules = [r for r in load_rules(settings.alert_rules_file, settings.alert_throttle_secs) if r.name not in RATE_RULES]
    engine = AlertEngine(rules, "events", settings.topic("events"))
    events = []
    for _, value, _ in plan.messages:
        try:
            events.append(parse_event(value, now=time.time(), max_bytes=settings.max_event_bytes))
        except InvalidEvent:
            continue
    ids: set[str] = set()
    for i in range(0, len(events), BATCH):
        part = events[i : i + BATCH]
        anomaly = handler.score_batch(part).anomaly
        scored = [
            Scored(e.id, e.ts, info.name, info.version, {"categorical": e.categorical}, anomaly_score=float(a))
            for e, a in zip(part, anomaly)
        ]
        ids |= {a.alert_id for a in engine.evaluate(scored).new}
    return ids


def wait_processing(worker, alive, timeout: float = 120.0) -> float:
    """Seconds until ``worker`` indexed its first event (it got partitions and its Faust worker runs)."""
    from prometheus_client.parser import text_string_to_metric_families

    def processed() -> float:
        families = text_string_to_metric_families(worker.metrics() or "")
        return sum(s.value for f in families for s in f.samples if s.name == "streamdl_events_processed_total")

    t = time.monotonic()
    while not processed():
        alive()
        assert time.monotonic() - t < timeout, f"the second worker processed nothing in {timeout:.0f}s"
        time.sleep(0.2)
    return time.monotonic() - t


def link_event_model(settings) -> None:
    """The project's ``sensors-ae`` (trained there once) in the fault stack's state folder."""
    from streamdl.models.event_models import ensure_sensor_model
    from streamdl.settings import load_settings

    project = load_settings({}, env_file=None).state_dir.resolve()
    folder = ensure_sensor_model(project).parent
    target = Path(settings.state_dir) / "models" / folder.name
    if not target.exists():
        target.symlink_to(folder)


@pytest.mark.timeout(1200)  # ~7 min on 2 shared cores, most of it the outages and restarts themselves
def test_the_events_stream_under_every_fault(fault_run, fault_results):
    run = fault_run
    run.settings = run.settings.model_copy(update={"worker_agents": "events", "max_batch_size": BATCH})
    link_event_model(run.settings)
    bound = run.settings.drain_secs + run.settings.shutdown_grace_secs
    rng = random.Random(20261201)
    plan = sensor_stream("ev", COUNT, BAD_EVERY)
    worker = run.worker()
    notes: list[str] = []
    with run.streaming("ev", COUNT, RATE, plan=plan) as (plan, monitor, producer):

        def at(share: float) -> None:
            monitor.wait_outputs(int(share * COUNT), timeout=300, alive=run.alive)
            time.sleep(rng.uniform(0.0, 1.0))

        kills = []
        for share in (0.08, 0.16, 0.24):
            at(share)
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait(10)
            kills.append(monitor.sample().outputs)
            run.restart(worker)
        notes.append(f"SIGKILL at {', '.join(f'{k:,}' for k in kills)} outputs")

        at(0.32)
        second = run.worker("worker-2")
        took_part = wait_processing(second, alive=lambda: run.alive(worker, second))
        at(0.44)
        t = time.monotonic()
        left = second.stop(timeout=60)
        notes.append(
            f"worker-2 joined at 32 % (processing {took_part:.1f} s after it served), left at 44 % "
            f"(exit {left} in {time.monotonic() - t:.1f} s)"
        )

        for share, service, name, secs in ((0.52, "kafka", "Kafka", 20), (0.66, "elasticsearch", "ES", 30)):
            at(share)
            t = monitor.now()
            run.stack.stop(service)
            time.sleep(secs)
            run.alive()
            run.stack.start()
            notes.append(f"{name} down {monitor.now() - t:.0f} s")

        at(0.86)
        t = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        code = worker.proc.wait(bound + 60)
        took = time.monotonic() - t
        notes.append(f"SIGTERM at 86 %: exit {code} in {took:.1f} s")
        run.restart(worker)
        sent_all = producer.finish()
        acc = account(run.settings, plan, monitor, timeout=400, alive=run.alive)
    t = time.monotonic()
    expected = fault_free_alert_ids(run.settings, plan)
    scoring = time.monotonic() - t
    alerts = [json.loads(m.value()) for m in read_all(run.settings, run.settings.topic("alerts"))]
    published = [a["alert_id"] for a in alerts if a["rule"] not in (*RATE_RULES, "sink_blocked")]
    from streamdl.connectors.es_client import es_client

    es = es_client(run.settings)
    es.indices.refresh(index=run.settings.alias("alerts"))
    hits = es.search(index=run.settings.alias("alerts"), size=10_000, source=["rule"])["hits"]["hits"]
    stored = {
        h["_id"] for h in hits if h["_source"]["rule"] not in RATE_RULES and h["_source"]["rule"] != "sink_blocked"
    }
    r = row(
        "events-all-faults",
        "events: SIGKILL x3, Kafka 20 s, ES 30 s, 2nd worker joins+leaves, SIGTERM",
        acc,
        "-",
        "; ".join(notes)
        + f"; alert ids {len(stored)} indexed / {len(set(published))} published ({len(published)} messages) vs "
        f"{len(expected)} fault-free, {len(stored ^ expected)} differ; fault-free pass {seconds([scoring])}",
    )
    report(fault_results, r)
    assert sent_all == COUNT and len(plan.bad) == COUNT // BAD_EVERY
    assert code == 0 and took < bound + 15, (code, took)
    assert left == 0
    assert_accounted(acc, plan)
    assert set(acc.dlq_reasons) == {"wrong_type"}, acc.dlq_reasons  # the invalid readings, with their reason
    assert expected, "the sample's anomalies raised no alert in the fault-free pass"
    assert stored == expected, (sorted(stored - expected)[:5], sorted(expected - stored)[:5])
    assert set(published) == expected, (sorted(set(published) - expected)[:5], sorted(expected - set(published))[:5])
