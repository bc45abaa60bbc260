"""The images agent: micro-batches from the images topic through :class:`ImagePipeline`.

Faust acks a ``take_events`` batch only when the loop body has finished with it, so offsets are
committed after the batch's documents were indexed and its messages delivered. The body must
not raise (Faust would ack the batch on the way out): the pipeline turns bad input into dead
letters and waits out service outages.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import faust

from streams.app import raw_topic
from streams.image_pipeline import ImagePipeline
from streams.records import InMessage

logger = logging.getLogger(__name__)

ATTEMPTS = 3
EXIT_BATCH_FAILED = 70  # EX_SOFTWARE


def to_message(event: faust.EventT) -> InMessage:
    """Faust's event as the library-independent :class:`InMessage`."""
    msg = event.message
    raw_headers = msg.headers or []
    items = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    headers = {k if isinstance(k, str) else k.decode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in items if v is not None}
    ts = msg.timestamp
    return InMessage(key=msg.key, value=msg.value, topic=msg.topic, partition=msg.partition, offset=msg.offset,
                     timestamp_ms=int(ts * 1000) if ts else None, headers=headers)


def register_images_agent(app: faust.App, pipeline: ImagePipeline) -> None:
    """Attach the images agent to ``app``; the pipeline must be set up already."""
    settings = pipeline.settings
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    topic = raw_topic(app, settings.topic("images"))

    @app.agent(topic, name="images")
    async def images(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(settings.max_batch_size, within=settings.max_batch_duration_secs):
            batch = [to_message(e) for e in events]
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    await loop.run_in_executor(executor, pipeline.process_batch, batch)
                    break
                except Exception:  # noqa: BLE001 - bad input never gets here; this is a bug or a lasting outage
                    logger.exception("batch of %d failed (attempt %d of %d)", len(batch), attempt, ATTEMPTS)
                    if attempt == ATTEMPTS:
                        # Leaving the loop would let Faust ack (and commit) a batch that was not processed.
                        # Exit without committing instead; the batch is redelivered when the worker restarts.
                        logger.critical("giving up on the batch at %s; exiting without committing its offsets",
                                        batch[0].coordinates)
                        os._exit(EXIT_BATCH_FAILED)
                    await asyncio.sleep(2.0 * attempt)

    @app.on_before_shutdown.connect
    async def _stop(app: faust.App, **kwargs) -> None:  # noqa: ARG001 - after the consumer stopped
        pipeline.stop()
        executor.shutdown(wait=True)
