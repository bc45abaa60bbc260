"""The yardstick for the agents' own overhead: the events pipeline driven by a plain confluent-kafka loop.

``python -m bench.plain_loop`` (settings from ``STREAMDL_*``, as a worker) sets up the same
:class:`~streamdl.streams.pipelines.events.EventPipeline` the worker runs, serves the same metrics,
then loops: consume up to ``max_batch_size`` messages (waiting at most the events linger),
``process_batch`` (compute then write, serial: no stage overlap), commit synchronously. Offsets are
committed only after the batch was written, as in the worker. SIGTERM ends the loop after the batch in hand.
"""

from __future__ import annotations

import logging
import signal
import sys

from confluent_kafka import Consumer
from prometheus_client import start_http_server

from streamdl.alert_rules import load_rules
from streamdl.connectors.kafka_config import kafka_config
from streamdl.connectors.kafka_messages import from_confluent
from streamdl.models.event_handler import load_event_handler
from streamdl.prometheus import REGISTRY
from streamdl.settings import Settings, load_settings
from streamdl.streams.agents.worker_process import WorkerProcess
from streamdl.streams.pipelines.events import EventPipeline


def run(settings: Settings) -> None:
    """Consume, process, commit until SIGTERM."""
    rules = load_rules(settings.alert_rules_file, settings.alert_throttle_secs)
    pipeline = EventPipeline(settings, load_event_handler(settings.event_model, settings.state_dir), rules)
    pipeline.setup()
    consumer = Consumer(
        kafka_config(
            settings,
            {"group.id": settings.consumer_group, "enable.auto.commit": False, "auto.offset.reset": "earliest"},
        )
    )
    consumer.subscribe([settings.topic("events")])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    start_http_server(settings.metrics_port, addr="127.0.0.1", registry=REGISTRY)
    try:
        while not stop:
            msgs = consumer.consume(settings.max_batch_size, timeout=settings.linger("events"))
            batch = [from_confluent(m) for m in msgs if m.error() is None]
            if batch:
                pipeline.process_batch(batch)
                consumer.commit(asynchronous=False)
    finally:
        consumer.close()
        pipeline.close()


class PlainLoopProcess(WorkerProcess):
    """``python -m bench.plain_loop`` as a child process, in place of a worker (same settings, metrics, stop)."""

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "bench.plain_loop"]

    @property
    def what(self) -> str:
        return "the plain loop"

    def start(self, timeout: float = 300.0) -> PlainLoopProcess:
        return super().start(timeout)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    run(load_settings(env_file=None))
