"""The README's demo: the whole product end to end on the local stack, with a short report."""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm import tqdm

from streamdl.connectors.es_client import es_client
from streamdl.connectors.image_producer import iter_digits, publish
from streamdl.connectors.kafka_producer import produce_all
from streamdl.connectors.setup import init_all
from streamdl.errors import StreamdlError
from streamdl.infra.stack import LocalStack, format_status
from streamdl.settings import Settings
from streamdl.streams.agents.worker_process import WorkerProcess
from streamdl.times import to_epoch


def run_demo(settings: Settings, say: Callable[[str], None] = print, timeout: float = 600.0) -> int:
    """Stack up, topics and indices, a worker, the digits sample through it, and a report."""
    t0 = time.monotonic()
    demo_registry = settings.state_dir.resolve() / "demo" / "mlflow.db"
    demo_registry.unlink(missing_ok=True)
    demo_registry.parent.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(  # a registry of the demo's own: section 6 forces a bad version to champion
        update={"mlflow_tracking_uri": f"sqlite:///{demo_registry}", "quality_interval_secs": 2.0, "rollback": True}
    )
    stack = LocalStack(settings, say=say)
    say("== 1/7 local stack")
    for name, what in stack.up().items():
        say(f"   {name}: {what}")
    say("== 2/7 topics and indices")
    for kind, name, what in init_all(settings):
        say(f"   {kind:<6} {name:<40} {what}")
    say(
        "== 3/7 worker "
        "(the default image and event models are trained on first use, about 30 s on 2 cores, then cached)"
    )
    worker = WorkerProcess(settings, settings.state_dir.resolve() / "logs" / "demo-worker.log").start(timeout=timeout)
    say(f"   worker pid {worker.proc.pid}, metrics http://127.0.0.1:{settings.metrics_port}/metrics, log {worker.log}")
    try:
        say("== 4/7 the digits sample through the pipeline")
        started = time.time()
        report = publish(settings, iter_digits(), total=1797, progress=True)
        say(f"   {report.summary()}")
        say(f"   and {len(BAD_INPUT)} deliberately bad messages, to show the dead-letter topic at work")
        produce_all(settings, settings.topic("images"), BAD_INPUT)
        docs = wait_for_documents(settings, since=started, expected=report.sent, timeout=timeout, worker=worker)
        elapsed = time.time() - started
        dead = wait_for_dead_letters(worker, len(BAD_INPUT), timeout=60)
        say("== 5/7 a day of the sensor sample (with injected anomalies) through the events agent")
        events = events_report(settings, worker, timeout)
        say("== 6/7 model quality: a bad version forced to champion, rolled back by its live labels")
        rollback = rollback_report(settings, worker, say, timeout)
        say("== 7/7 model quality: the same bad head as a shadow beside version 1, then as a canary")
        shadow = shadow_report(settings, worker, say, timeout)
    finally:
        worker.stop()
    print(demo_report(docs, elapsed, dead, settings.topic("dlq")))
    print(events)
    print(rollback)
    print(shadow)
    print(similar_report(settings))
    print(format_status(stack.status()))
    print(
        f"demo finished in {time.monotonic() - t0:.0f}s. "
        "Try: .venv/bin/streamdl stack status; stop with .venv/bin/streamdl stack down"
    )
    return 0


BAD_INPUT = [
    ("demo-bad-empty", b"", [("source", b"demo")]),
    ("demo-bad-text", b"this is not an image", [("source", b"demo")]),
    ("demo-bad-truncated", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00 ", [("source", b"demo")]),
]


def wait_for_dead_letters(worker: WorkerProcess, expected: int, timeout: float) -> dict[str, int]:
    """The worker's dead-letter counts by reason, once at least ``expected`` were counted."""
    deadline = time.monotonic() + timeout
    while True:
        counts = {reason: int(n) for reason, n in worker.metric("streamdl_dead_letters_total", "reason").items()}
        if sum(counts.values()) >= expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def wait_for_documents(
    settings: Settings, since: float, expected: int, timeout: float, worker: WorkerProcess
) -> list[dict]:
    """Wait until ``expected`` images processed after ``since`` are searchable; returns their documents."""
    es = es_client(settings)
    alias = settings.alias("images")
    query = {"range": {"processed_time": {"gte": int(since * 1000), "format": "epoch_millis"}}}
    deadline = time.monotonic() + timeout
    with tqdm(total=expected, unit="doc", desc="indexed", leave=False) as bar:
        while True:
            es.indices.refresh(index=alias)
            count = es.count(index=alias, query=query)["count"]
            bar.update(count - bar.n)
            if count >= expected:
                break
            if not worker.alive:
                raise StreamdlError(f"the worker died; log {worker.log}:\n{worker.tail()}")
            if time.monotonic() > deadline:
                raise StreamdlError(f"only {count} of {expected} images indexed after {timeout:.0f}s; log {worker.log}")
            time.sleep(0.5)
    hits = es.search(index=alias, query=query, size=10_000, source=["image_id", "label", "true_label", "model_version"])
    return [h["_source"] for h in hits["hits"]["hits"]]


def events_report(settings: Settings, worker: WorkerProcess, timeout: float) -> str:
    """Day 3 of the sensor sample (one the default event model never saw) through the worker; the
    anomaly alerts it raised, scored against the injected episodes."""
    from streamdl.connectors.event_producer import EventItem, publish_events
    from streamdl.models.event_models import SENSOR_TRAIN_DAYS
    from streamdl.models.sensor_sample import score_detections, sensor_anomalies, sensor_events
    from streamdl.records import to_json

    day = SENSOR_TRAIN_DAYS
    sample = list(sensor_events(days=day + 1))
    first = to_epoch(sample[0]["ts"])
    events = [e for e in sample if to_epoch(e["ts"]) >= first + day * 86_400]
    started = time.time()
    report = publish_events(
        settings, (EventItem(e["id"], to_json(e), "sample:sensors") for e in events), total=len(events)
    )
    es = es_client(settings)
    alias = settings.alias("events")
    query = {"range": {"processed_time": {"gte": int(started * 1000), "format": "epoch_millis"}}}
    deadline = time.monotonic() + timeout
    while True:
        es.indices.refresh(index=alias)
        count = es.count(index=alias, query=query)["count"]
        if count >= report.sent or time.monotonic() > deadline or not worker.alive:
            break
        time.sleep(0.5)
    elapsed = time.time() - started
    es.indices.refresh(index=settings.alias("alerts"))
    alerts = [
        h["_source"]
        for h in es.search(
            index=settings.alias("alerts"),
            size=10_000,
            query={
                "bool": {
                    "filter": [
                        {"term": {"kind": "anomaly_score_at_least"}},
                        {
                            "range": {
                                "ts": {
                                    "gte": int((first + day * 86_400) * 1000),
                                    "lt": int((first + (day + 1) * 86_400) * 1000),
                                    "format": "epoch_millis",
                                }
                            }
                        },
                    ]
                }
            },
        )["hits"]["hits"]
    ]
    episodes = [a for a in sensor_anomalies(days=day + 1) if a.start >= first + day * 86_400]
    score = score_detections([(a["subject_id"], to_epoch(a["ts"])) for a in alerts], episodes)
    return "\n".join(
        [
            f"  events indexed        {count} of {report.sent} in {elapsed:.1f}s "
            f"({count / max(elapsed, 1e-9):.0f} events/s, produce to searchable)",
            f"  anomaly alerts        {len(alerts)} (+{sum(a['suppressed'] for a in alerts)} throttled firings) for "
            f"{len(episodes)} injected episodes: precision {score.precision:.2f}, recall {score.recall:.2f}",
            "  try                   .venv/bin/streamdl alerts --since 7d --rule anomaly",
            "",
        ]
    )


def similar_report(settings: Settings) -> str:
    """The neighbours of one digit the model never trained on, and a contact sheet of them."""
    from streamdl.models.digits import held_out_ids
    from streamdl.streams.search import SimilaritySearch
    from streamdl.streams.web.contact_sheet import contact_sheet

    image_id = sorted(held_out_ids())[0]
    search = SimilaritySearch(settings)
    result = search.by_id(image_id, k=8)
    query = search.stored(image_id, result.index)
    sheet = settings.state_dir.resolve() / "demo-similar.png"
    sheet.write_bytes(contact_sheet(result, query.thumbnail, f"query  label {query.true_label}\n{image_id}"))
    labels = " ".join(n.true_label or "?" for n in result.neighbours)
    return "\n".join(
        [
            f"  similar to {image_id} (a {query.true_label}):  labels of the 8 nearest: {labels}  "
            f"({result.took_ms:.0f} ms)",
            f"  contact sheet         {sheet}",
            "  try                   .venv/bin/streamdl similar --id digits-0042 --k 5;  .venv/bin/streamdl serve",
            "",
        ]
    )


def demo_report(docs: list[dict], seconds: float, dead: dict[str, int], dlq_topic: str) -> str:
    """How many were indexed, how fast, how accurate, how many dead letters."""
    from streamdl.models.digits import held_out_ids

    labelled = [d for d in docs if d.get("true_label") is not None]
    correct = sum(d["label"] == d["true_label"] for d in labelled)
    held = held_out_ids()
    held_docs = [d for d in labelled if d["image_id"] in held]
    held_correct = sum(d["label"] == d["true_label"] for d in held_docs)
    versions = sorted({f"{d.get('model_version')}" for d in docs})
    return "\n".join(
        [
            "",
            "streamdl demo report",
            f"  images indexed        {len(docs)} in {seconds:.1f}s "
            f"({len(docs) / seconds:.0f} images/s, produce to searchable)",
            f"  model version         {', '.join(versions)}",
            f"  accuracy, all         {correct / max(1, len(labelled)):.4f} "
            f"({correct}/{len(labelled)}, most were training data)",
            f"  accuracy, held out    {held_correct / max(1, len(held_docs)):.4f} "
            f"({held_correct}/{len(held_docs)}, never seen in training)",
            f"  dead letters          {sum(dead.values())} in {dlq_topic} "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(dead.items())) or 'none'})",
            "",
        ]
    )


def rollback_report(settings: Settings, worker: WorkerProcess, say: Callable[[str], None], timeout: float) -> str:
    """The rollback scenario (:func:`~streamdl.streams.quality.demo.run_rollback_scenario`) on the demo's worker."""
    from streamdl.streams.quality.demo import run_rollback_scenario, running_version

    run = run_rollback_scenario(
        settings, lambda: running_version(worker, "champion"), say=say, timeout=min(timeout, 180.0)
    )
    return "Model quality (docs/model-quality.md):\n" + run.summary()


def shadow_report(settings: Settings, worker: WorkerProcess, say: Callable[[str], None], timeout: float) -> str:
    """The shadow and canary scenario (:func:`~streamdl.streams.quality.demo.run_shadow_scenario`) on the demo's
    worker."""
    from streamdl.streams.quality.demo import run_shadow_scenario, running_version

    timeout = min(timeout, 180.0)
    run = run_shadow_scenario(settings, lambda role: running_version(worker, role), say=say, timeout=timeout)
    return "Shadow and canary (docs/model-quality.md):\n" + run.summary()
