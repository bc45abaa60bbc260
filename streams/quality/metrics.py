"""The Prometheus metrics of live quality and drift (on the registry the worker serves)."""

from prometheus_client import Counter, Gauge

from streamdl.prometheus import REGISTRY

_VERSION = ["name", "version", "window"]

LABELS = Counter(
    "streamdl_quality_labels",
    "Label events by outcome: joined, pending, orphan, duplicate, contradiction, replay, late_joined, late_orphan",
    ["outcome"],
    registry=REGISTRY,
)
ACCURACY = Gauge("streamdl_quality_accuracy", "Live accuracy from late labels", _VERSION, registry=REGISTRY)
LABELLED = Gauge("streamdl_quality_labelled", "Labelled predictions in the window", _VERSION, registry=REGISTRY)
ECE = Gauge("streamdl_quality_ece", "Expected calibration error from late labels", _VERSION, registry=REGISTRY)
DELAY = Gauge(
    "streamdl_quality_label_delay_seconds",
    "Seconds from a prediction to its label (p50, p95)",
    [*_VERSION, "quantile"],
    registry=REGISTRY,
)
DISAGREEMENT = Gauge(
    "streamdl_quality_repeated_labels",
    "Labels for images labelled already, in the window: duplicate (same class) or contradiction",
    [*_VERSION, "kind"],
    registry=REGISTRY,
)
ORPHANS = Gauge(
    "streamdl_quality_orphans",
    "Labels that found no prediction in the longest window, by reason; 'pending' ones still wait",
    ["reason"],
    registry=REGISTRY,
)
DRIFT = Gauge(
    "streamdl_drift",
    "Drift of the last window against the version's reference: class_psi, class_js, confidence_psi, embedding_mmd",
    ["name", "version", "signal"],
    registry=REGISTRY,
)
ROLLBACKS = Counter(
    "streamdl_quality_rollbacks",
    "Automatic rollbacks of the champion",
    ["name", "from_version", "to_version"],
    registry=REGISTRY,
)
