"""``streamdl worker``: set up the pipelines (fail fast), serve metrics, run the Faust worker."""

from __future__ import annotations

import gc
import logging

from streamdl.alert_rules import Rule, load_rules
from streamdl.connectors.kafka_admin import ensure_topics
from streamdl.errors import SettingsError
from streamdl.models.catalog import load_handler
from streamdl.models.handler import ModelHandler
from streamdl.prometheus import check_metrics_port, serve_metrics
from streamdl.settings import Settings
from streamdl.streams.agents.app import create_app
from streamdl.streams.agents.hot_swap import ModelFollower
from streamdl.streams.agents.lag import LagMonitor
from streamdl.streams.agents.memory import inflight_limits
from streamdl.streams.agents.micro_batch import register_batch_agent
from streamdl.streams.agents.shutdown import BoundedWorker
from streamdl.streams.pipelines.writer import MicroBatchPipeline

logger = logging.getLogger(__name__)


def make_handler(settings: Settings) -> ModelHandler:
    """The configured model's handler, not loaded yet: the registry's champion version when one was
    retrained, else the model itself. A bad name, file or argument fails here, before any service is contacted."""
    from streamdl.streams.agents.hot_swap import registered_handler

    try:
        champion = registered_handler(settings)
        if champion is not None:
            return champion
        handler = load_handler(
            settings.model_name,
            state_dir=settings.state_dir,
            batch_size=settings.max_batch_size,
            weights=settings.weights,
            mode=settings.model_mode,
            head=settings.model_head,
            mixed_precision=settings.mixed_precision,
        )
    except ValueError as exc:  # an argument the model layer refuses: a settings problem for the user
        raise SettingsError(f"model settings (STREAMDL_MODEL_*): {exc}") from None
    return handler


def make_pipelines(settings: Settings, rules: tuple[Rule, ...]) -> dict[str, MicroBatchPipeline]:
    """The pipelines of the configured agents, not set up yet (bad model names fail here)."""
    pipelines: dict[str, MicroBatchPipeline] = {}

    def quality(stream: str) -> list:  # live quality, drift and rollback (docs/model-quality.md)
        from streamdl.streams.quality.sink import QualitySink

        return [QualitySink(settings, stream=stream, rules=rules)] if settings.quality else []

    if "images" in settings.agents:
        from streamdl.streams.pipelines.images import ImagePipeline

        pipelines["images"] = ImagePipeline(settings, make_handler(settings), rules, sinks=quality("images"))
    if "events" in settings.agents:
        from streamdl.models.event_handler import load_event_handler
        from streamdl.streams.pipelines.events import EventPipeline

        pipelines["events"] = EventPipeline(
            settings, load_event_handler(event_model_ref(settings), settings.state_dir), rules, sinks=quality("events")
        )
    return pipelines


def event_model_ref(settings: Settings) -> str:
    """The event model to serve: ``name:version`` as configured, else the registry's champion of ``name``
    (promote or roll back with ``streamdl models ... --model NAME``), else the latest saved version."""
    from streamdl.models.event_models import resolve_ref
    from streamdl.models.registry import Registry

    name, version = resolve_ref(settings.event_model)
    if version is not None or not Registry.exists(settings):
        return settings.event_model
    champion = Registry.from_settings(settings).champion(name)
    if champion is None or champion.kind != "event":
        return settings.event_model
    return f"{name}:{champion.tags['folder_version']}"


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM."""

    rules = load_rules(
        settings.alert_rules_file, settings.alert_throttle_secs
    )  # a bad file fails before anything starts
    check_metrics_port(settings, "metrics_port")  # a taken port fails now, not after the model loaded
    pipelines = make_pipelines(settings, rules)
    ensure_topics(settings)
    for pipeline in pipelines.values():
        pipeline.setup()  # loads the models, makes the indices, checks the services
    gc.collect()
    gc.freeze()  # the ~400k long-lived TensorFlow/Keras/Faust objects leave the collector's sight: full collections
    # stop all threads for 5-50 ms instead of 200-265 ms (bench.events, docs/benchmarks.md)
    try:
        serve_metrics(settings, "metrics_port")
    except SettingsError:  # taken since the check at start
        for pipeline in pipelines.values():
            pipeline.close()
        raise
    limits = inflight_limits(settings, tuple(pipelines))
    logger.info(
        "in flight at most %.0f MiB of messages: fetch %d bytes per partition, stream buffer %d, batches %s",
        limits.bound / 2**20,
        limits.fetch_bytes,
        limits.buffer_messages,
        limits.batch_size,
    )
    app = create_app(settings, limits)
    if settings.processing_guarantee == "exactly_once":  # the study of docs/operations.md; not the default
        from streamdl.streams.agents.transactional import FaustTransactionalOutputs

        for pipeline in pipelines.values():
            pipeline.replace_kafka_outputs(FaustTransactionalOutputs(app, settings))
        logger.warning("processing_guarantee=exactly_once: outputs in the transactions of their input partitions")
    for name, pipeline in pipelines.items():
        register_batch_agent(
            app,
            name,
            settings.topic(name),
            pipeline,
            max_batch_size=limits.batch_size[name],
            max_batch_duration_secs=settings.linger(name),
            batches_ahead=settings.agent_batches_ahead,
            index_batches=settings.index_batches(name),
            drain_secs=settings.drain_secs,
            commit_each_batch=settings.processing_guarantee == "exactly_once",
        )
    followers = (
        [ModelFollower(settings, pipelines["images"]).start()] if settings.hot_swap and "images" in pipelines else []
    )
    logger.info("worker runs %s%s", ", ".join(pipelines), " and follows model updates" if followers else "")
    lag = LagMonitor(settings, [settings.topic(name) for name in pipelines]).start()  # the dashboard's lag panel
    worker = BoundedWorker(
        app,
        shutdown_limit=settings.drain_secs + settings.shutdown_grace_secs,
        loglevel=settings.log_level.lower(),
        quiet=True,
        redirect_stdouts=False,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        for follower in followers:
            follower.stop()
        lag.stop()
        for pipeline in pipelines.values():
            pipeline.close()
        worker.watchdog.cancel()  # the shutdown finished within its bound
    return 0
