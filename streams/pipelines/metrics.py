"""The workers' Prometheus metrics (on the shared registry the worker serves); ``stream`` is
``images`` or ``events``."""

from prometheus_client import Counter, Gauge, Histogram

from streamdl.prometheus import REGISTRY

IMAGES_PROCESSED = Counter("streamdl_images_processed", "Images indexed and predicted", registry=REGISTRY)
EVENTS_PROCESSED = Counter(
    "streamdl_events_processed", "Events indexed (and scored, except label events)", registry=REGISTRY
)
BATCH_SIZE = Histogram(
    "streamdl_batch_size",
    "Messages per micro-batch",
    ["stream"],
    registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
STAGE_SECONDS = Histogram(
    "streamdl_stage_seconds",
    "Time per micro-batch in each stage",
    ["stream", "stage"],
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEAD_LETTERS = Counter(
    "streamdl_dead_letters", "Messages sent to the dead-letter topic", ["stream", "reason"], registry=REGISTRY
)
MODEL_VERSION = Gauge(
    "streamdl_model_loaded",
    "1 for the model version the worker serves",
    ["stream", "name", "version"],
    registry=REGISTRY,
)
MODEL_ROLE = Gauge(
    "streamdl_model_role",
    "1 for the version the worker runs beside the champion as its shadow or canary",
    ["stream", "name", "version", "role"],
    registry=REGISTRY,
)
SIDE_ERRORS = Counter(
    "streamdl_model_side_errors",
    "Micro-batches a shadow or canary version failed on (the champion's outputs stood)",
    ["role"],
    registry=REGISTRY,
)
ALERTS = Counter("streamdl_alerts", "Alerts raised (throttled ones not counted)", ["stream", "rule"], registry=REGISTRY)
ALERTS_SUPPRESSED = Counter(
    "streamdl_alerts_suppressed",
    "Firings folded into an open alert by throttling",
    ["stream", "rule"],
    registry=REGISTRY,
)
