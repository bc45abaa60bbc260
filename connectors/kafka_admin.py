"""Create and inspect the product's Kafka topics with confluent-kafka's AdminClient."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streamdl.connectors.kafka_config import KafkaErrors, kafka_config
from streamdl.errors import ServiceUnavailable, SettingsError
from streamdl.settings import TOPIC_NAMES, Settings

logger = logging.getLogger(__name__)

COMPACTED = ("model-updates", "dlq-replayed")
"""Topics keyed by name where only the latest value matters (a model's announcement, a dead letter's replay)."""


def admin_client(settings: Settings) -> AdminClient:
    """An AdminClient for the configured cluster; its errors are kept in ``streamdl_errors``
    (for :func:`check_kafka`)."""
    config = kafka_config(settings)
    admin = AdminClient(config)
    admin.streamdl_errors = config["error_cb"]
    return admin


def check_kafka(admin: AdminClient, settings: Settings, timeout: float | None = None) -> None:
    """Fail fast with a one-line message when no broker answers within ``timeout`` (default
    ``connect_timeout_secs``), or (:class:`SettingsError`) when it refuses the credentials, its
    certificate is not trusted, or it speaks another security protocol."""
    errors: KafkaErrors | None = getattr(admin, "streamdl_errors", None)
    timeout = settings.connect_timeout_secs if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        try:
            meta = admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            break
        except KafkaException:
            admin.poll(0)  # serves the error events (authentication, TLS) to errors
            problem = errors.explain() if errors is not None else None
            if problem:
                raise SettingsError(problem) from None
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(kafka_unavailable(settings, timeout)) from None
    if not meta.brokers:
        raise ServiceUnavailable(f"Kafka at {settings.kafka_bootstrap_servers} reported no brokers.")


def kafka_unavailable(settings: Settings, timeout: float) -> str:
    """The one-line message for brokers that did not answer within ``timeout`` seconds."""
    return (
        f"Kafka at {settings.kafka_bootstrap_servers} did not answer within {timeout:.0f}s; is it running? "
        "Start it with 'streamdl stack up', or set STREAMDL_KAFKA_BOOTSTRAP_SERVERS (and check that "
        f"STREAMDL_KAFKA_SECURITY_PROTOCOL ({settings.kafka_security_protocol}) is the broker listener's)."
    )


def ensure_topics(settings: Settings, names: tuple[str, ...] = TOPIC_NAMES, timeout: float = 30.0) -> dict[str, str]:
    """Create the product's topics that do not exist yet; returns ``{topic: "created" | "exists"}``."""
    admin = admin_client(settings)
    check_kafka(admin, settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = {settings.topic(n): n for n in names}
    result = {t: "exists" for t in wanted if t in existing}
    new = [
        NewTopic(
            topic,
            num_partitions=1 if short in COMPACTED else settings.topic_partitions,
            replication_factor=-1,
            config={"cleanup.policy": "compact"} if short in COMPACTED else {},
        )
        for topic, short in wanted.items()
        if topic not in existing
    ]
    for topic, future in (admin.create_topics(new, operation_timeout=timeout) if new else {}).items():
        try:
            future.result(timeout)
            result[topic] = "created"
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
            result[topic] = "exists"
    logger.info("topics %s", " ".join(f"{t}={s}" for t, s in sorted(result.items())))
    return result
