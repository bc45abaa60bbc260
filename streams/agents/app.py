"""The Faust app of the workers: one app, its topics, and the agents registered on it."""

from __future__ import annotations

import faust

from streamdl.connectors.kafka_config import faust_credentials
from streamdl.settings import Settings
from streamdl.streams.agents.faust_adapter import RawSchema, StreamApp
from streamdl.streams.agents.memory import InflightLimits, inflight_limits


def create_app(settings: Settings, limits: InflightLimits | None = None) -> faust.App:
    """A Faust app (:class:`StreamApp`) for ``settings``: raw bytes in and out, no web server (metrics are
    served separately). Its aiokafka clients use the same security settings as every other client
    (:func:`faust_credentials`); its fetch size and stream buffer are ``limits`` (default: those of the
    configured agents)."""
    limits = limits or inflight_limits(settings, settings.agents)
    return StreamApp(
        settings.consumer_group,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),
        datadir=str(settings.state_dir.resolve() / "faust"),
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        # exactly_once: each batch commits its own transaction right after its acks (streams/agents/transactional.py);
        # a periodic commit could take in the outputs of the batch being written without its offsets.
        broker_commit_interval=1.0 if settings.processing_guarantee == "at_least_once" else 86_400.0,
        broker_commit_every=10_000 if settings.processing_guarantee == "at_least_once" else 2**62,
        # A worker that dies without leaving the group (SIGKILL, OOM) holds its partitions until its session
        # expires: Faust's default 60 s stalled them for a minute in the fault suite. Heartbeats come from the
        # event loop, which inference never blocks (it runs in an executor), so 10 s is safe.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        # On shutdown and rebalance do not wait for every buffered message to be acked: with a service down
        # that wait never ends (SIGTERM hung until Elasticsearch came back). The agent finishes or abandons
        # the batch in hand itself (streams/agents/micro_batch.py); what was not acked is redelivered.
        stream_wait_empty=False,
        consumer_max_fetch_size=limits.fetch_bytes,
        producer_max_request_size=16 * 1024 * 1024,
        stream_buffer_maxsize=limits.buffer_messages,
        processing_guarantee=settings.processing_guarantee,
    )


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic of raw bytes keys and values (:class:`RawSchema`)."""
    return app.topic(name, schema=RawSchema())
