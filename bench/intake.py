"""Intake alone: how fast Faust hands messages to an agent, against a plain confluent-kafka loop, with no work.

``python -m bench.intake faust|faust-take|faust-stock|plain TOPIC COUNT`` reads ``COUNT`` messages of ``TOPIC``
(a fresh consumer group, from the earliest offset) and prints one JSON line: messages/s and CPU µs per message
(all threads of the process), timed from the first message to the last.

- ``faust``: the workers' own :class:`~streamdl.streams.agents.faust_adapter.StreamApp` with an agent that
  does what the micro-batch agent does with each message and nothing else: ``take_batches(256)``, ack each
  event; Faust commits the acked offsets.
- ``faust-take``: the same app with Faust's ``noack_take(256)`` instead (what ``take_batches`` saves).
- ``faust-stock``: ``noack_take(256)`` on Faust's own ``faust.App`` (what the StreamApp's changes save).
- ``plain``: ``consume(256)`` and a synchronous commit per batch.

:func:`intake_rates` runs both in child processes on one topic; ``bench.events`` prints them beside the
pipeline's rows: the ceiling Faust itself puts on a worker on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

BATCH = 256
MODES = ("faust-stock", "faust-take", "faust", "plain")


@dataclass
class IntakeRun:
    mode: str
    rate: float
    cpu_us: float
    """CPU µs per message, all threads of the reading process."""


def _report(mode: str, count: int, t0: float, c0: float) -> None:
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"mode": mode, "rate": count / seconds, "cpu_us": 1e6 * cpu / count}), flush=True)


def read_plain(bootstrap: str, topic: str, count: int) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"intake-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen, t0, c0 = 0, 0.0, 0.0
    while seen < count:
        msgs = consumer.consume(BATCH, timeout=0.05)
        if msgs and not seen:
            t0, c0 = time.perf_counter(), time.process_time()
        seen += sum(1 for m in msgs if m.error() is None)
        if msgs:
            consumer.commit(asynchronous=False)
    _report("plain", seen, t0, c0)
    consumer.close()


def read_faust(bootstrap: str, topic: str, count: int, mode: str = "faust") -> None:
    import faust

    from streamdl.streams.agents.app import raw_topic
    from streamdl.streams.agents.faust_adapter import StreamApp, take_batches

    app = (faust.App if mode == "faust-stock" else StreamApp)(
        f"intake-{uuid.uuid4().hex[:12]}",
        broker=f"kafka://{bootstrap}",
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="streamdl-intake-"),  # not an intake-*-data folder in the working directory
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        broker_commit_interval=1.0,
    )
    state = {"seen": 0, "t0": 0.0, "c0": 0.0}

    @app.agent(raw_topic(app, topic))
    async def take(stream) -> None:
        batches = take_batches(stream, BATCH, 0.05) if mode == "faust" else stream.noack_take(BATCH, within=0.05)
        async for events in batches:
            if not state["seen"]:
                state["t0"], state["c0"] = time.perf_counter(), time.process_time()
            for event in events:
                await stream.ack(event)
            state["seen"] += len(events)
            if state["seen"] >= count:
                _report(mode, state["seen"], state["t0"], state["c0"])
                os._exit(0)  # the number is out; no need to wait for Faust's orderly stop

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


def intake_rates(bootstrap: str, topic: str, count: int, timeout: float = 300.0) -> list[IntakeRun]:
    """The three intakes, one after the other, each in its own process, on ``count`` messages of ``topic``."""
    runs = []
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, "-m", "bench.intake", mode, topic, str(count), bootstrap],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        # Faust's worker logs what its process prints (stderr), the plain loop prints it (stdout)
        lines = [line[line.index("{") :] for line in (out.stdout + out.stderr).splitlines() if '{"mode"' in line]
        if not lines:
            raise RuntimeError(f"the {mode} intake gave no result (exit {out.returncode}):\n{out.stderr[-3000:]}")
        runs.append(IntakeRun(**json.loads(lines[-1])))
    return runs


if __name__ == "__main__":
    mode, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    bootstrap = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1:9092"
    if mode not in MODES:
        sys.exit(f"usage: python -m bench.intake {'|'.join(MODES)} TOPIC COUNT [BOOTSTRAP]")
    if mode == "plain":
        read_plain(bootstrap, topic, count)
    else:
        read_faust(bootstrap, topic, count, mode)
