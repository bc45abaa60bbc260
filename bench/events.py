"""``python -m bench.events``: the events agent against its bare model, batching and produce-to-alert latency,
as one table.

In one run on this machine, for the default event model (``sensors-ae``) and sensor events from
day 3 of the sample on (where anomalies are injected):

- **bare**: ``score_batch`` at batch 256 and one record per call (best of 3);
- **agent**: a real ``streamdl worker`` running only the events agent (own topics, indices and
  consumer group); events produced as fast as possible, timed until all are searchable, with
  ``max_batch_size`` 256 (micro-batched) and 1 (one event per call);
- **plain loop**: the same ``EventPipeline`` driven by a plain confluent-kafka loop
  (:mod:`bench.plain_loop`: consume 256, ``process_batch``, commit; serial), on the same events:
  the yardstick for the Faust agent's own overhead;
- **intake alone**: the same events read by a Faust agent that only takes and acks them (on Faust's
  stock app with ``noack_take``, on the workers' own ``StreamApp`` with ``noack_take`` and with the
  workers' ``take_batches``), and by a confluent-kafka loop that only consumes
  and commits (:mod:`bench.intake`): the ceiling Faust itself puts on the worker, with the CPU each
  spends per message;
- **Elasticsearch ceiling**: the same documents (computed beforehand), pre-serialized into bulk
  bodies of 256, sent one at a time and two at a time, then a refresh: no other work;
- **what the cores allow**: from the CPU per event of each process in the micro-batched run, the bare model's
  and Faust's intake measured apart (:mod:`bench.cpu`): the rate at which the worker's CPU fills one core, the
  rate the cores allow a worker costing only the model and the intake, and what a 15,000 events/s target
  leaves the worker;
- **profile**: py-spy samples of the micro-batched worker while it runs (top-N tables);
- **latency**: events produced at half the micro-batched agent rate, a known fraction made
  anomalous (temperature +40 °C, vibration x5); an anomaly rule with ``subject: id`` raises one
  alert per anomalous event (no throttling across events). Time from ``produce()`` to the alert
  on the alerts topic, and to the prediction on the predictions topic, p50 and p99.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from bench.cpu import Budget, CpuMeter, budget_table, cpu_table
from bench.intake import IntakeRun, intake_rates
from bench.pipeline import BenchStack, PipelineRun
from bench.plain_loop import PlainLoopProcess
from bench.profile import Profile
from streamdl.connectors.kafka_config import kafka_config
from streamdl.infra.stack import LocalStack
from streamdl.models.sensor_sample import QUIET_DAYS, sensor_events
from streamdl.records import to_json
from streamdl.settings import Settings, load_settings
from streamdl.streams.agents.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
MACHINES = 6
INTERVAL_SECS = 60
ALERT_THRESHOLD = 3.0
TARGET_EVENTS_PER_SEC = 15_000
"""Issue 11's target for one worker, micro-batched."""
RULES = f"""\
# python -m bench.events: one alert per anomalous event (subject: id), so no throttling across events.
version: 1
rules:
  - name: anomaly
    severity: critical
    anomaly_score_at_least: {ALERT_THRESHOLD}
    subject: id
  - name: dead_letter_rate
    severity: warning
    dead_letter_rate_above: 0.05
    window: 5m
    min_messages: 50
"""


def say(msg: str) -> None:
    print(f"[bench.events] {msg}", file=sys.stderr, flush=True)


# --- inputs --------------------------------------------------------------------------------------
def sensor_sample(count: int) -> list[dict]:
    """Up to ``count`` sensor events from day ``QUIET_DAYS + 1`` on (the days with injected anomalies)."""
    skip = QUIET_DAYS * 86400 // INTERVAL_SECS * MACHINES
    days = list(itertools.islice(sensor_events(machines=MACHINES, interval_secs=INTERVAL_SECS), skip, skip + count))
    return [days[i % len(days)] for i in range(count)]  # beyond day 7: cycled (the runs give fresh ids)


def make_anomalous(event: dict) -> dict:
    """A copy of a normal reading, overheating and shaking: temperature +40 °C, vibration x5."""
    out = copy.deepcopy(event)
    numeric = out["numeric"]
    numeric["temperature"] = (numeric["temperature"] if numeric["temperature"] is not None else 40.0) + 40.0
    numeric["vibration"] = (numeric["vibration"] if numeric["vibration"] is not None else 1.5) * 5.0
    return out


def with_id(event: dict, event_id: str) -> bytes:
    return to_json({**event, "id": event_id})


# --- bare model ----------------------------------------------------------------------------------
def bare_rates(
    handler, records: list[dict], batch_size: int, singles: int, repeats: int = 3
) -> tuple[float, float, float]:
    """Events per second of ``score_batch``: whole batches of ``batch_size``, and one record per call
    (best of ``repeats``); and the CPU µs per event of the batched calls (this process, all threads)."""
    from streamdl.models.event_features import EventRecord

    recs = [EventRecord.of(r) for r in records]  # the worker gives the handler EventRecords too
    handler.score_batch(recs[:batch_size])  # warm-up
    handler.score_batch(recs[:1])
    batched = single = 0.0
    cpu_us = float("inf")
    scored = len(recs) // batch_size * batch_size
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, len(recs) - batch_size + 1, batch_size):
            handler.score_batch(recs[start : start + batch_size])
        batched = max(batched, scored / (time.perf_counter() - t0))
        cpu_us = min(cpu_us, 1e6 * (time.process_time() - c0) / scored)
        t0 = time.perf_counter()
        for r in recs[:singles]:
            handler.score_batch([r])
        single = max(single, singles / (time.perf_counter() - t0))
    return batched, single, cpu_us


# --- the Elasticsearch ceiling ------------------------------------------------------------------
def es_ceiling(settings: Settings, handler, events: list[dict], batch_size: int, inflight: int) -> PipelineRun:
    """Events per second Elasticsearch indexes the pipeline's own documents for ``events``, pre-serialized
    in bulk bodies of ``batch_size`` (``inflight`` requests at a time), until searchable: nothing else runs."""
    from concurrent.futures import ThreadPoolExecutor

    from streamdl.connectors.es_bulk import RESPONSE_FILTER, encode
    from streamdl.connectors.es_client import es_client
    from streamdl.connectors.es_mappings import events_index
    from streamdl.connectors.setup import ensure_fixed_index
    from streamdl.records import InMessage
    from streamdl.streams.pipelines.events import EventPipeline

    tag = f"benchceil{os.getpid()}{inflight}"
    pipeline = EventPipeline(settings, handler)
    pipeline.info = handler.info()
    messages = [
        InMessage(f"{tag}-{i}".encode(), with_id(e, f"{tag}-{i}"), "events", 0, i) for i, e in enumerate(events)
    ]
    docs = [
        d for s in range(0, len(messages), batch_size) for d in pipeline.compute(messages[s : s + batch_size]).documents
    ]
    es = es_client(settings)
    alias = f"{tag}-events"
    index = ensure_fixed_index(es, alias, events_index())
    bodies = [
        b"".join(encode(index, d.id, d.body) for d in docs[s : s + batch_size]) for s in range(0, len(docs), batch_size)
    ]

    def send(body: bytes) -> None:
        if es.bulk(operations=body, filter_path=RESPONSE_FILTER).get("errors"):
            raise RuntimeError("the ceiling's bulk request had errors")

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(inflight) as pool:
            list(pool.map(send, bodies))
        es.indices.refresh(index=alias)
        run = PipelineRun(len(docs), time.perf_counter() - t0)
        if es.count(index=alias)["count"] != len(docs):
            raise RuntimeError("the ceiling's documents are not all searchable")
        return run
    finally:
        es.options(ignore_status=404).indices.delete(index=f"{tag}-*")
        es.close()


# --- the events agent ----------------------------------------------------------------------------
STAGES = ("validate", "model", "documents", "index", "publish")
"""The events pipeline's steps, as the worker's ``streamdl_stage_seconds`` names them."""
BUCKETS = "streamdl_stage_seconds_bucket"
TAIL_BOUNDS = (0.025, 0.05, 0.1, 0.25)
"""Bucket bounds of ``streamdl_stage_seconds`` the tail table reports (seconds)."""


@dataclass
class Latency:
    rate: float
    seconds: float
    sent: int
    anomalous: int
    expected: int
    """Alerts expected: events the handler scored at or above the rule's threshold before the run."""
    arrived: int
    unexpected: int
    alert_ms: np.ndarray
    prediction_ms: np.ndarray
    predictions: int
    stages: dict[str, float] = field(default_factory=dict)
    batches: float = 0.0
    started: float = 0.0
    """Wall-clock time of the first produce."""
    series: np.ndarray | None = None
    """``(seconds after the first produce, produce-to-prediction ms)`` of every event, by produce time."""
    segments: dict[str, np.ndarray] = field(default_factory=dict)
    """Produce-to-prediction split (ms) by the prediction's ``processed_time`` (after the model) and
    its Kafka timestamp (set when the worker publishes it, after indexing)."""
    stage_buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    """Per stage, how many of the run's batches took at most each bucket's seconds (the worker's
    ``streamdl_stage_seconds`` histogram, cumulative): where the latency tail comes from."""

    def pct(self, what: str, q: float) -> float:
        values = self.alert_ms if what == "alert" else self.prediction_ms
        return float(np.percentile(values, q)) if len(values) else float("nan")


class EventStack(BenchStack):
    """A worker running only the events agent, with its own topics, indices, consumer group and rules file."""

    def __init__(
        self,
        base: Settings,
        log_dir: Path,
        batch_size: int,
        linger: float | None,
        rules_file: Path,
        process: type[WorkerProcess] = WorkerProcess,
    ) -> None:
        linger_setting = {} if linger is None else {"max_batch_duration_secs": linger}
        super().__init__(
            base,
            log_dir,
            stream="events",
            process=process,
            max_batch_size=batch_size,
            alert_rules_file=rules_file,
            **linger_setting,
        )

    def stage_seconds(self) -> dict[str, float]:
        return self.worker.metric("streamdl_stage_seconds_sum", "stage", stream="events")

    def batches(self) -> float:
        return self.worker.metric("streamdl_batch_size_count", "stream").get("events", 0.0)

    def stage_buckets(self) -> dict[str, dict[float, float]]:
        """Per stage, the worker's cumulative ``streamdl_stage_seconds`` bucket counts by upper bound."""
        return {
            stage: {float(le): n for le, n in self.worker.metric(BUCKETS, "le", stream="events", stage=stage).items()}
            for stage in STAGES
        }

    def throughput(
        self, messages: list[tuple[str, bytes]], meter: CpuMeter | None = None, profile: Profile | None = None
    ) -> PipelineRun:
        """Produce ``messages`` (key, value) as fast as possible; time until all are searchable.
        With ``meter``, ``self.cpu`` holds the CPU seconds each process used meanwhile; ``profile`` samples
        the worker meanwhile."""
        topic = self.settings.topic("events")
        start_count = self.count()
        if profile is not None:
            profile.start(self.worker.proc.pid)
        if meter is not None:
            cpu0 = meter.start(self.worker.proc.pid)
        t0 = time.perf_counter()
        for i, (key, value) in enumerate(messages):
            self.deliveries.produce(topic, value, key)
            if i % 1000 == 0:
                self.deliveries.producer.poll(0)
        self.deliveries.wait(timeout=600)
        say(f"  produced {len(messages)} in {time.perf_counter() - t0:.1f}s; waiting until indexed")
        last, last_t = -1, time.perf_counter()
        while True:
            indexed = self.count() - start_count
            if indexed >= len(messages):
                break
            if not self.worker.alive:
                raise RuntimeError(f"worker died:\n{self.worker.tail()}")
            if indexed != last:
                last, last_t = indexed, time.perf_counter()
            elif time.perf_counter() - last_t > 120:
                raise RuntimeError(
                    f"stuck at {indexed} of {len(messages)} indexed; log {self.worker.log}:\n{self.worker.tail()}"
                )
            time.sleep(0.25)
        run = PipelineRun(len(messages), time.perf_counter() - t0)
        if meter is not None:
            self.cpu = meter.used_since(cpu0)
        if profile is not None:
            profile.stop()
        return run

    def alert_latency(
        self,
        base: list[dict],
        anomalous: set[int],
        expected: set[int],
        rate: float,
        seconds: float,
        meter: CpuMeter | None = None,
    ) -> Latency:
        """Produce ``rate``/s for ``seconds`` (cycling ``base``; positions in ``anomalous`` made anomalous);
        produce-to-alert times of the events whose base position is in ``expected``, produce-to-prediction of all."""
        topics = [self.settings.topic("alerts"), self.settings.topic("predictions")]
        consumer = Consumer(
            kafka_config(
                self.settings, {"group.id": f"{self.tag}-lat", "enable.auto.commit": False, "fetch.wait.max.ms": 10}
            )
        )
        parts = []
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                parts.append(TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p))[1]))
        consumer.assign(parts)
        got: dict[str, dict[str, float]] = {topics[0]: {}, topics[1]: {}}
        published: dict[str, tuple[float, int, bytes]] = {}
        stop = threading.Event()

        def receive() -> None:
            while not stop.is_set():
                msg = consumer.poll(0.05)
                if msg is not None and not msg.error():
                    now, key = time.perf_counter(), msg.key().decode()
                    got[msg.topic()].setdefault(key, now)
                    if msg.topic() == topics[1]:
                        published.setdefault(key, (time.time(), msg.timestamp()[1], msg.value()))

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        time.sleep(1.0)  # let the consumer fetch from its assigned offsets first
        count = int(rate * seconds)
        values = [make_anomalous(e) if i in anomalous else e for i, e in enumerate(base)]
        keys = [f"{self.tag}-lat-{i}" for i in range(count)]
        payload = [with_id(values[i % len(base)], keys[i]) for i in range(count)]
        want = {keys[i] for i in range(count) if i % len(base) in expected}
        stages0, batches0, buckets0 = self.stage_seconds(), self.batches(), self.stage_buckets()
        cpu0 = meter.start(self.worker.proc.pid) if meter is not None else None
        topic = self.settings.topic("events")
        sent: dict[str, float] = {}
        sent_wall: dict[str, float] = {}
        t0, started = time.perf_counter(), time.time()
        for i in range(count):
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent[keys[i]] = time.perf_counter()
            sent_wall[keys[i]] = time.time()
            self.deliveries.produce(topic, payload[i], keys[i])
            self.deliveries.producer.poll(0)
        produced_in = time.perf_counter() - t0
        if meter is not None:
            self.cpu = meter.used_since(cpu0)
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline and (len(got[topics[1]]) < count or not want <= set(got[topics[0]])):
            time.sleep(0.2)
        time.sleep(1.0)  # stragglers: unexpected alerts
        stop.set()
        reader.join()
        consumer.close()
        alerts, predictions = got[topics[0]], got[topics[1]]
        stages = {k: v - stages0.get(k, 0.0) for k, v in self.stage_seconds().items()}
        split: dict[str, list[float]] = {"produce→scored": [], "scored→published": [], "published→received": []}
        for key, (arrived, published_ms, value) in published.items():
            if key not in sent_wall:
                continue
            scored = datetime.fromisoformat(json.loads(value)["processed_time"]).timestamp()
            split["produce→scored"].append(1000 * (scored - sent_wall[key]))
            split["scored→published"].append(published_ms - 1000 * scored)
            split["published→received"].append(1000 * arrived - published_ms)
        return Latency(
            rate=count / produced_in,
            seconds=produced_in,
            sent=count,
            anomalous=sum(1 for i in range(count) if i % len(base) in anomalous),
            expected=len(want),
            arrived=len(want & set(alerts)),
            unexpected=len(set(alerts) - want),
            alert_ms=np.array([1000 * (alerts[k] - sent[k]) for k in want if k in alerts]),
            prediction_ms=np.array([1000 * (t - sent[k]) for k, t in predictions.items() if k in sent]),
            predictions=sum(1 for k in predictions if k in sent),
            stages=stages,
            batches=self.batches() - batches0,
            segments={k: np.array(v) for k, v in split.items()},
            stage_buckets={
                stage: {le: n - buckets0.get(stage, {}).get(le, 0.0) for le, n in counts.items()}
                for stage, counts in self.stage_buckets().items()
            },
            started=started,
            series=np.array(sorted((sent[k] - t0, 1000 * (t - sent[k])) for k, t in predictions.items() if k in sent)),
        )


# --- the run -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.events", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=30_000, help="events through the micro-batched agent")
    parser.add_argument(
        "--one-per-call-events", type=int, default=800, help="events through the agent at max_batch_size 1"
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="max_batch_size of the micro-batched worker (and the bare batch)"
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=None,
        help="max_batch_duration_secs of the workers (the main latency knob); default: the product's events "
        "linger (events_batch_linger_secs)",
    )
    parser.add_argument(
        "--latency-secs", type=float, default=25.0, help="how long to produce at half the measured rate"
    )
    parser.add_argument(
        "--anomalous", type=float, default=0.03, help="fraction of the latency run's events made anomalous"
    )
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false", help="no py-spy profile of the micro-batched worker"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "events.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    settings = load_settings({"state_dir": ROOT / ".streamdl"}, env_file=None)
    default_linger = args.default_linger = args.linger is None
    args.linger = settings.linger("events") if default_linger else args.linger
    local = LocalStack(settings, say=lambda m: print(f"[stack] {m}", file=sys.stderr))
    local.up()
    meter = CpuMeter(
        {"worker": None, "elasticsearch": local.service("elasticsearch").pid(), "kafka": local.service("kafka").pid()}
    )
    log_dir = settings.state_dir.resolve() / "logs"
    rules_file = log_dir / "bench-events-rules.yaml"
    rules_file.parent.mkdir(parents=True, exist_ok=True)
    rules_file.write_text(RULES, encoding="utf-8")

    from streamdl.models.event_handler import load_event_handler

    say("loading sensor events and the event model")
    sample = sensor_sample(max(args.events, 4096))
    handler = load_event_handler(settings.event_model, settings.state_dir)
    handler.load()
    info = handler.info()
    say(f"bare {info.name} v{info.version}: score_batch at {args.batch_size} and one per call")
    bare, single, bare_cpu_us = bare_rates(handler, sample[:8192], args.batch_size, 1000)

    # The latency run's base: 4096 readings cycled with fresh ids; a fixed ``--anomalous`` share made anomalous.
    base = sample[:4096]
    rng = np.random.default_rng(0)
    anomalous = set(rng.choice(len(base), int(round(args.anomalous * len(base))), replace=False).tolist())
    scores = handler.score_batch([make_anomalous(e) if i in anomalous else e for i, e in enumerate(base)]).anomaly
    expected = {i for i in range(len(base)) if scores[i] >= ALERT_THRESHOLD}
    injected_min = float(min(scores[i] for i in anomalous))
    say(
        f"latency base: {len(anomalous)} injected (lowest score {injected_min:.0f}), "
        f"{len(expected - anomalous)} natural anomalies at or above {ALERT_THRESHOLD}"
    )
    if injected_min < ALERT_THRESHOLD:
        raise SystemExit(f"an injected anomaly scored {injected_min:.2f}, under the threshold {ALERT_THRESHOLD}")

    say(f"agent, max_batch_size {args.batch_size}, linger {args.linger}s: {args.events} events")
    linger = None if default_linger else args.linger  # None: the workers run with the product's default
    stack = EventStack(settings, log_dir, args.batch_size, linger, rules_file)
    profile = Profile(log_dir / f"{stack.tag}.pyspy.txt") if args.profile and Profile.available() else None
    try:
        run = stack.throughput(
            [(f"{stack.tag}-{i}", with_id(e, f"{stack.tag}-{i}")) for i, e in enumerate(sample[: args.events])],
            meter,
            profile,
        )
        cpu = stack.cpu
        stages = stack.stage_seconds()
        batches = stack.batches()
        say(f"  {run.rate:.0f} events/s ({run.seconds:.1f}s)")
        rate = run.rate / 2
        say(f"latency at {rate:.0f} events/s for {args.latency_secs:.0f}s")
        lat = stack.alert_latency(base, anomalous, expected, rate, args.latency_secs, meter)
        cpu_lat = stack.cpu
        say(
            f"  alerts {lat.arrived}/{lat.expected}, p50/p99 {lat.pct('alert', 50):.0f}/{lat.pct('alert', 99):.0f} ms; "
            f"predictions {lat.predictions}/{lat.sent}, p50/p99 "
            f"{lat.pct('prediction', 50):.0f}/{lat.pct('prediction', 99):.0f} ms"
        )
    finally:
        stack.close()

    say(f"agent, max_batch_size 1: {args.one_per_call_events} events")
    stack1 = EventStack(settings, log_dir, 1, linger, rules_file)
    try:
        run1 = stack1.throughput(
            [
                (f"{stack1.tag}-{i}", with_id(e, f"{stack1.tag}-{i}"))
                for i, e in enumerate(sample[: args.one_per_call_events])
            ],
            meter,
        )
        cpu1 = stack1.cpu
        stages1 = stack1.stage_seconds()
        batches1 = stack1.batches()
        say(f"  {run1.rate:.0f} events/s ({run1.seconds:.1f}s)")
    finally:
        stack1.close()

    say(f"plain confluent-kafka loop, max_batch_size {args.batch_size}: {args.events} events")
    loop_stack = EventStack(settings, log_dir, args.batch_size, linger, rules_file, process=PlainLoopProcess)
    try:
        loop_run = loop_stack.throughput(
            [
                (f"{loop_stack.tag}-{i}", with_id(e, f"{loop_stack.tag}-{i}"))
                for i, e in enumerate(sample[: args.events])
            ]
        )
        say(f"  {loop_run.rate:.0f} events/s ({loop_run.seconds:.1f}s)")
        say(f"intake alone (Faust agent, plain loop; no work): the same {args.events} events")
        intakes = intake_rates(settings.kafka_bootstrap_servers, loop_stack.settings.topic("events"), args.events)
        say("  " + ", ".join(f"{i.mode} {i.rate:.0f}/s, {i.cpu_us:.0f} µs CPU per message" for i in intakes))
    finally:
        loop_stack.close()
    ceilings = {}
    for inflight in (1, 2):
        ceilings[inflight] = es_ceiling(settings, handler, sample[: args.events], args.batch_size, inflight)
        say(f"Elasticsearch ceiling, {inflight} bulk in flight: {ceilings[inflight].rate:.0f} events/s")
    table = render(
        args,
        info,
        bare,
        single,
        run,
        run1,
        lat,
        [
            ("micro-batched", cpu, run),
            ("one per call", cpu1, run1),
            ("latency run", cpu_lat, PipelineRun(lat.sent, lat.seconds)),
        ],
        [
            (f"micro-batched throughput ({args.events} events)", stages, batches, run),
            (f"one per call ({args.one_per_call_events} events)", stages1, batches1, run1),
            (f"latency run ({lat.sent} events at {lat.rate:.0f}/s)", lat.stages, lat.batches, None),
        ],
    )
    table += "\n\n" + render_yardsticks(run, loop_run, ceilings, intakes)
    faust_intake = next(i.cpu_us for i in intakes if i.mode == "faust")
    table += "\n\n" + "\n".join(
        [
            "What this machine's cores allow (CPU per event as measured above, the services' in the micro-batched",
            "run; the bare model and Faust's intake measured apart):",
            "",
            *budget_table(
                Budget.of(cpu, run.images, bare_cpu_us, floor_us=faust_intake),
                "event",
                run.rate,
                ("one worker, micro-batched", TARGET_EVENTS_PER_SEC),
                floor="Faust's intake alone (take_batches + ack)",
                one_core=True,
            ),
        ]
    )
    if profile is not None:
        table += "\n\n" + profile.tables(f"the micro-batched worker ({args.events} events)")
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"<!-- python -m bench.events, {time.strftime('%Y-%m-%d %H:%M')}, linger {args.linger}s -->\n{table}\n"
    )
    return 0


def render_yardsticks(
    run: PipelineRun, loop: PipelineRun, ceilings: dict[int, PipelineRun], intakes: list[IntakeRun]
) -> str:
    """The agent against the same pipeline in a plain loop, against Elasticsearch alone, and the intakes alone."""
    best = max(c.rate for c in ceilings.values())
    lines = [
        "| run (same events, produce→searchable) | events/s | Faust worker / this |",
        "| --- | ---: | ---: |",
        f"| Faust worker, micro-batched | {run.rate:.0f} | 1.00 |",
        f"| plain confluent-kafka loop (consume, process_batch, commit) | {loop.rate:.0f} "
        f"| **{run.rate / loop.rate:.2f}** |",
    ]
    for inflight, c in ceilings.items():
        lines.append(
            f"| Elasticsearch ceiling: pre-serialized bulks, {inflight} in flight | {c.rate:.0f} "
            f"| {run.rate / c.rate:.2f}{' (of the best ceiling)' if c.rate == best else ''} |"
        )
    what = {
        "faust-stock": "Faust intake alone, stock faust.App: agent noack_take(256) + ack, no work",
        "faust-take": "Faust intake alone, the workers' StreamApp with Faust's noack_take(256) + ack",
        "faust": "Faust intake alone, the workers' StreamApp and take_batches(256) + ack (the worker's intake)",
        "plain": "confluent-kafka intake alone: consume(256) + commit",
    }
    for intake in intakes:
        lines.append(
            f"| {what[intake.mode]} ({intake.cpu_us:.0f} µs CPU per message) | {intake.rate:.0f} "
            f"| {run.rate / intake.rate:.2f} |"
        )
    return "\n".join(lines)


def render(
    args,
    info,
    bare: float,
    single: float,
    run: PipelineRun,
    run1: PipelineRun,
    lat: Latency,
    cpu_rows: list[tuple[str, dict[str, float], PipelineRun]],
    stage_rows: list[tuple[str, dict[str, float], float, PipelineRun | None]],
) -> str:
    b = args.batch_size
    lines = [
        f"| event model | bare score_batch (ev/s, batch {b}) | bare one per call (ev/s) | bare batch / one "
        f"| agent micro-batched (ev/s, batch {b}) | agent one per call (ev/s) | agent micro-batched / one per call "
        "| agent / bare | produce→alert p50 / p99 (ms) | alerts arrived / expected "
        "| produce→prediction p50 / p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {info.name} v{info.version} | {bare:.0f} | {single:.0f} | {bare / single:.0f}x "
        f"| {run.rate:.0f} ({run.images} events) | {run1.rate:.1f} ({run1.images} events) "
        f"| **{run.rate / run1.rate:.1f}x** "
        f"| {run.rate / bare:.3f} "
        f"| **{lat.pct('alert', 50):.0f} / {lat.pct('alert', 99):.0f}** at {lat.rate:.0f} ev/s, "
        f"linger {args.linger:g}s{' (default)' if args.default_linger else ''} "
        f"| {lat.arrived} / {lat.expected} ({lat.anomalous} injected"
        f"{f', {lat.unexpected} unexpected' if lat.unexpected else ''}) "
        f"| {lat.pct('prediction', 50):.0f} / {lat.pct('prediction', 99):.0f} ({lat.predictions} of {lat.sent}) |",
    ]
    lines += [
        "",
        "Where the time goes (the worker's streamdl_stage_seconds; "
        "validate, model and documents (the documents and predictions) run on the compute thread, index on the",
        "index thread, publish on the publish thread, overlapped across batches; index includes the alert rules,",
        "whose alerts ride in the documents' bulk):",
        "",
        "| run | batches | mean batch | "
        + " | ".join(f"{s} ms/batch" for s in STAGES)
        + " | "
        + " | ".join(f"{s} µs/event" for s in STAGES)
        + " | wall µs/event |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in STAGES * 2) + " | ---: |",
    ]
    for name, secs, batches, r in stage_rows:
        events = r.images if r is not None else lat.sent
        per_batch = " | ".join(f"{1000 * secs.get(s, 0) / max(batches, 1):.2f}" for s in STAGES)
        per_event = " | ".join(f"{1e6 * secs.get(s, 0) / max(events, 1):.0f}" for s in STAGES)
        wall = f"{1e6 * r.seconds / r.images:.0f}" if r is not None else "-"
        lines.append(
            f"| {name} | {batches:.0f} | {events / max(batches, 1):.1f} | {per_batch} | {per_event} | {wall} |"
        )
    lines += [
        "",
        "CPU per event (µs of CPU, all threads, from /proc; bench = this producer process; others =",
        "the rest of the machine, e.g. other work sharing it), and the share of the machine's cores in use:",
        "",
        *cpu_table("µs", [(name, used, r.images, r.seconds) for name, used, r in cpu_rows]),
    ]
    if lat.segments:
        lines += [
            "",
            "Produce→prediction in the latency run, split by the prediction's processed_time "
            "(set after the model) and its",
            "Kafka timestamp (set when the worker publishes it, after indexing and the alert rules); ms, wall clock:",
            "",
            "| segment | what it holds | p50 | p99 |",
            "| --- | --- | ---: | ---: |",
        ]
        holds = {
            "produce→scored": "producer linger, fetch, waiting for the micro-batch to fill (linger), validate, model",
            "scored→published": "waiting for the batches before, alert rules, one bulk (documents and alerts), Kafka",
            "published→received": "delivery (acks=all), the bench consumer's fetch",
        }
        for name, ms in lat.segments.items():
            lines.append(f"| {name} | {holds[name]} | {np.percentile(ms, 50):.0f} | {np.percentile(ms, 99):.0f} |")
    lines += stage_tail_table(lat.stage_buckets)
    return "\n".join(lines)


def stage_tail_table(buckets: dict[str, dict[float, float]], bounds: tuple[float, ...] = TAIL_BOUNDS) -> list[str]:
    """Markdown lines: per stage, the share of the latency run's batches that took longer than each bound."""
    rows = [(stage, counts) for stage, counts in buckets.items() if counts.get(float("inf"), 0.0) > 0]
    if not rows:
        return []
    lines = [
        "",
        "Batches of the latency run by stage time (the worker's streamdl_stage_seconds histogram): the share that took",
        "longer than each bound; the produce→alert tail is made of these:",
        "",
        "| stage | batches | " + " | ".join(f"> {1000 * b:.0f} ms" for b in bounds) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in bounds) + " |",
    ]
    for stage, counts in rows:
        total = counts[float("inf")]
        shares = [1 - counts.get(b, total) / total for b in bounds]
        lines.append(f"| {stage} | {total:.0f} | " + " | ".join(f"{100 * x:.1f} %" for x in shares) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
