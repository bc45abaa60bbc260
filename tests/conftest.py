"""Shared fixtures: the real local stack (started or reused once per session) and per-test
topics and indices with unique names, removed afterwards."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from streamdl.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The default settings (local stack on 127.0.0.1), state under the project's .streamdl/."""
    state = Path(os.environ.get("STREAMDL_STATE_DIR", ROOT / ".streamdl"))
    return load_settings({"state_dir": state}, env_file=None)


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """Start the local Kafka + Elasticsearch, or reuse the ones already running. Left running at the end."""
    from infra.stack import LocalStack

    LocalStack(settings, say=lambda m: print(f"[stack] {m}")).up()
    return settings


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique lower-case names for topics, indices and groups."""
    return lambda prefix: f"test-{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def topic_factory(stack: Settings, unique) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics; they are deleted after the test."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap_servers})
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
    from connectors.es_client import es_client

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
