"""Shared fixtures: the real local stack (started or reused once per session) and per-test
topics and indices with unique names, removed afterwards."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from streamdl.infra.process import free_port
from streamdl.settings import Settings, load_settings

if TYPE_CHECKING:
    from streamdl.streams.agents.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The default settings (local stack on 127.0.0.1), state under the project's .streamdl/."""
    state = Path(os.environ.get("STREAMDL_STATE_DIR", ROOT / ".streamdl"))
    return load_settings({"state_dir": state}, env_file=None)


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """Start the local Kafka + Elasticsearch, or reuse the ones already running. Left running at the end."""
    from streamdl.infra.stack import LocalStack

    LocalStack(settings, say=lambda m: print(f"[stack] {m}")).up()
    return settings


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique lower-case names for topics, indices and groups."""
    return lambda prefix: f"test-{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def topic_factory(stack: Settings, unique) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics; they are deleted after the test."""
    from confluent_kafka.admin import NewTopic

    from streamdl.connectors.kafka_admin import admin_client

    admin = admin_client(stack)
    made: list[str] = []

    def make(prefix: str = "topic", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = unique(prefix)
        admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result(30)
        made.append(name)
        return name

    yield make
    if made:
        for fut in admin.delete_topics(made, operation_timeout=30).values():
            fut.result(30)


@pytest.fixture
def es(stack: Settings):
    from streamdl.connectors.es_client import es_client

    client = es_client(stack)
    yield client
    client.close()


@pytest.fixture
def index_factory(es, unique) -> Iterator[Callable[..., str]]:
    """Uniquely named index names; every index and alias starting with them is deleted after the test."""
    made: list[str] = []

    def make(prefix: str = "index") -> str:
        name = unique(prefix)
        made.append(name)
        return name

    yield make
    for name in made:
        es.options(ignore_status=404).indices.delete(index=f"{name}*")


@contextmanager
def tagged_settings(base: Settings, **overrides) -> Iterator[Settings]:
    """Settings with topics, indices and a consumer group of their own, created (``init_all``); everything
    removed afterwards."""
    from streamdl.connectors.es_client import es_client
    from streamdl.connectors.kafka_admin import admin_client
    from streamdl.connectors.setup import init_all

    tag = f"t{uuid.uuid4().hex[:8]}"
    settings = base.model_copy(
        update={
            "topic_prefix": f"{tag}.",
            "index_prefix": f"{tag}-",
            "consumer_group": f"{tag}-workers",
            "metrics_port": free_port(),
            **overrides,
        }
    )
    init_all(settings)
    try:
        yield settings
    finally:
        es_client(settings).options(ignore_status=404).indices.delete(index=f"{tag}-*")
        admin = admin_client(settings)
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tag)]
        if topics:
            admin.delete_topics(topics, operation_timeout=30)


@contextmanager
def running_stream(base: Settings, log: Path, **overrides) -> Iterator[tuple[Settings, WorkerProcess]]:
    """A real worker on its own topics, indices and consumer group; everything removed afterwards."""
    from streamdl.streams.agents.worker_process import WorkerProcess

    with tagged_settings(base, **overrides) as settings:
        worker = WorkerProcess(settings, log).start()
        try:
            yield settings, worker
        finally:
            worker.stop()


@pytest.fixture
def own_settings(stack: Settings) -> Callable[..., contextmanager]:
    """``with own_settings(**setting_overrides) as settings:`` topics and indices of the test's own, no worker."""
    return lambda **overrides: tagged_settings(stack, **overrides)


@pytest.fixture(scope="session")
def stream_factory(stack: Settings) -> Callable[..., contextmanager]:
    """``with stream_factory(log_path, **setting_overrides) as (settings, worker):`` a real worker on the stack."""
    return lambda log, **overrides: running_stream(stack, log, **overrides)


def _read_topic(
    settings: Settings, topic: str, until: Callable[[list], bool], timeout: float = 120.0, settle: float = 0.0
) -> list:
    """Messages of ``topic`` from the start until ``until(messages)`` holds or ``timeout`` passes;
    then ``settle`` seconds more, to see any message beyond those expected."""
    from confluent_kafka import Consumer, TopicPartition

    from streamdl.connectors.kafka_config import kafka_config

    consumer = Consumer(kafka_config(settings, {"group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False}))
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    got: list = []
    deadline = time.monotonic() + timeout
    try:
        while not until(got) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append(msg)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append(msg)
    finally:
        consumer.close()
    return got


@pytest.fixture(scope="session")
def read_topic() -> Callable[..., list]:
    """``read_topic(settings, topic, until, timeout=120, settle=0)``: a topic's messages from the start."""
    return _read_topic
