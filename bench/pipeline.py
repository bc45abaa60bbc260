"""Measurements: bare model throughput, one image per call, the whole pipeline, latency, worker memory."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from bench.cpu import CpuMeter
from streamdl.connectors.es_client import es_client
from streamdl.connectors.kafka_config import kafka_config
from streamdl.connectors.kafka_producer import Deliveries
from streamdl.connectors.setup import init_all
from streamdl.infra.process import free_port, rss_bytes
from streamdl.models.catalog import load_handler
from streamdl.models.decode import decode_image
from streamdl.settings import Settings
from streamdl.streams.agents.worker_process import WorkerProcess


def decoded(handler, images: list[bytes]) -> np.ndarray:
    info = handler.info()
    return np.stack([decode_image(b, info.input_size, info.channels) for b in images])


def model_rate(
    model: str, weights: str | None, state_dir: Path, batch_size: int, images: list[bytes], repeats: int = 3
) -> tuple[float, float]:
    """Images per second of bare ``predict_batch`` at ``batch_size`` on already decoded images (best of
    ``repeats``), and the CPU µs per image it took (this process, all threads; the least of ``repeats``)."""
    handler = load_handler(model, state_dir=state_dir, batch_size=batch_size, weights=weights)
    handler.load()
    x = decoded(handler, images)
    handler.predict_batch(x[:batch_size])  # warm-up
    best, cpu_us = 0.0, float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        if batch_size == 1:
            for row in x:
                handler.predict_batch(row[None])
        else:
            handler.predict_batch(x)
        best = max(best, len(x) / (time.perf_counter() - t0))
        cpu_us = min(cpu_us, 1e6 * (time.process_time() - c0) / len(x))
    return best, cpu_us


@dataclass
class PipelineRun:
    images: int
    seconds: float
    rss_at: dict[int, int] = field(default_factory=dict)
    """Peak worker RSS (bytes) once N images were indexed."""

    @property
    def rate(self) -> float:
        return self.images / self.seconds


class BenchStack:
    """A worker running one agent (``stream``: images or events) with its own topics, indices and consumer
    group on the running local stack; ``overrides`` are further settings (model, batch size, rules file);
    ``process`` runs it (the worker, or ``bench.plain_loop``'s loop)."""

    def __init__(
        self,
        base: Settings,
        log_dir: Path,
        *,
        stream: str = "images",
        process: type[WorkerProcess] = WorkerProcess,
        **overrides,
    ) -> None:
        tag = f"bench{uuid.uuid4().hex[:6]}"
        self.stream = stream
        self.settings = base.model_copy(
            update={
                "topic_prefix": f"{tag}.",
                "index_prefix": f"{tag}-",
                "consumer_group": f"{tag}-workers",
                "metrics_port": free_port(),
                "log_level": "WARNING",
                "worker_agents": stream,
                **overrides,
            }
        )
        self.tag = tag
        init_all(self.settings)
        self.worker = process(self.settings, log_dir / f"{tag}.log").start(timeout=600)
        self.es = es_client(self.settings)
        self.deliveries = Deliveries.connect(self.settings)
        self.cpu: dict[str, float] = {}
        """CPU seconds per process of the last run given a :class:`~bench.cpu.CpuMeter`."""

    def count(self) -> int:
        """Documents in this stream's index (refreshed first)."""
        alias = self.settings.alias(self.stream)
        self.es.indices.refresh(index=alias)
        return self.es.count(index=alias)["count"]

    def run(
        self, images: list[bytes], total: int, checkpoints: tuple[int, ...] = (), meter: CpuMeter | None = None
    ) -> PipelineRun:
        """Produce ``total`` images (cycling through ``images``) as fast as possible; time until all are searchable.
        With ``meter``, ``self.cpu`` holds the CPU seconds each process used meanwhile."""
        topic = self.settings.topic("images")
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes(self.worker.proc.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start_count = self.count()
        if meter is not None:
            cpu0 = meter.start(self.worker.proc.pid)
        t0 = time.perf_counter()
        for i in range(total):
            self.deliveries.produce(topic, images[i % len(images)], f"{self.tag}-{start_count + i}")
            if i % 1000 == 0:
                self.deliveries.producer.poll(0)
        self.deliveries.wait(timeout=600)
        run = PipelineRun(total, 0.0)
        pending = sorted(checkpoints)
        while True:
            indexed = self.count() - start_count
            while pending and indexed >= pending[0]:
                run.rss_at[pending.pop(0)] = peak[0]
            if indexed >= total:
                break
            if not self.worker.alive:
                raise RuntimeError(f"worker died:\n{self.worker.tail()}")
            time.sleep(0.25)
        run.seconds = time.perf_counter() - t0
        if meter is not None:
            self.cpu = meter.used_since(cpu0)
        done.set()
        return run

    def stage_seconds(self) -> dict[str, float]:
        """Total seconds the worker spent in each stage so far (its ``streamdl_stage_seconds`` sums)."""
        return self.worker.metric("streamdl_stage_seconds_sum", "stage")

    def latency(self, images: list[bytes], rate: float, count: int) -> tuple[float, float]:
        """Produce ``count`` images at ``rate``/s; p50 and p99 of produce-to-prediction time, in ms."""
        predictions = self.settings.topic("predictions")
        consumer = Consumer(kafka_config(self.settings, {"group.id": f"{self.tag}-lat", "enable.auto.commit": False}))
        parts = consumer.list_topics(predictions, timeout=10).topics[predictions].partitions
        consumer.assign(
            [
                TopicPartition(predictions, p, consumer.get_watermark_offsets(TopicPartition(predictions, p))[1])
                for p in parts
            ]
        )
        sent: dict[str, float] = {}
        got: dict[str, float] = {}
        stop = threading.Event()

        def receive() -> None:
            while not stop.is_set():
                msg = consumer.poll(0.1)
                if msg is not None and not msg.error():
                    got[msg.key().decode()] = time.perf_counter()

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        topic = self.settings.topic("images")
        t0 = time.perf_counter()
        for i in range(count):
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            key = f"{self.tag}-lat-{i}"
            sent[key] = time.perf_counter()
            self.deliveries.produce(topic, images[i % len(images)], key)
            self.deliveries.producer.poll(0)
        deadline = time.perf_counter() + 120
        while len(set(sent) & set(got)) < count and time.perf_counter() < deadline:
            time.sleep(0.1)
        stop.set()
        reader.join()
        consumer.close()
        ms = np.array([1000 * (got[k] - sent[k]) for k in sent if k in got])
        if len(ms) < count:
            raise RuntimeError(f"only {len(ms)} of {count} predictions arrived")
        return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))

    def close(self) -> None:
        self.worker.stop()
        self.es.options(ignore_status=404).indices.delete(index=f"{self.tag}-*")
        from streamdl.connectors.kafka_admin import admin_client

        admin = admin_client(self.settings)
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.tag)]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                future.result()  # wait: the request is asynchronous, and a process that exits at once never sends it
