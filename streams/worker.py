"""``streamdl worker``: set up the pipeline (fail fast), serve metrics, run the Faust worker."""

from __future__ import annotations

import logging

from connectors.kafka_admin import ensure_topics
from models.catalog import load_handler
from streamdl.metrics import serve_metrics
from streamdl.settings import Settings
from streams.agents.images import register_images_agent
from streams.app import create_app
from streams.image_pipeline import ImagePipeline

logger = logging.getLogger(__name__)


def build_pipeline(settings: Settings) -> ImagePipeline:
    """The image pipeline for the configured model, set up (services checked, model loaded, index ready)."""
    handler = load_handler(settings.model_name, state_dir=settings.state_dir, batch_size=settings.max_batch_size,
                           weights=None if (settings.model_weights or "").lower() == "none" else settings.model_weights,
                           mixed_precision=settings.mixed_precision)
    pipeline = ImagePipeline(settings, handler)
    pipeline.setup()
    return pipeline


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM."""
    import faust

    ensure_topics(settings)
    pipeline = build_pipeline(settings)
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
