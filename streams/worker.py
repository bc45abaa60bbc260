"""``streamdl worker``: set up the pipeline (fail fast), serve metrics, run the Faust worker."""

from __future__ import annotations

import logging

from connectors.kafka_admin import ensure_topics
from models.catalog import load_handler
from models.handler import ModelHandler
from streamdl.errors import SettingsError
from streamdl.metrics import serve_metrics
from streamdl.settings import Settings
from streams.agents.images import register_images_agent
from streams.app import create_app
from streams.image_pipeline import ImagePipeline

logger = logging.getLogger(__name__)


def make_handler(settings: Settings) -> ModelHandler:
    """The configured model's handler, not loaded yet; a bad name, file or argument fails here, before any service is contacted."""
    try:
        handler = load_handler(settings.model_name, state_dir=settings.state_dir, batch_size=settings.max_batch_size,
                               weights=settings.weights,
                               mode=settings.model_mode, head=settings.model_head, mixed_precision=settings.mixed_precision)
    except ValueError as exc:  # an argument the model layer refuses: a settings problem for the user
        raise SettingsError(f"model settings (STREAMDL_MODEL_*): {exc}") from None
    return handler


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM."""
    import faust

    handler = make_handler(settings)
    ensure_topics(settings)
    pipeline = ImagePipeline(settings, handler)
    pipeline.setup()
    serve_metrics(settings.metrics_port)
    app = create_app(settings)
    register_images_agent(app, pipeline)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        pipeline.close()
    return 0
