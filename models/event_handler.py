"""Score event records with a registered event model: the event counterpart of the image handler.

``load_event_handler("sensors-ae", state_dir)`` (the latest version) or ``"name:version"`` gives an
:class:`EventModelHandler`; :meth:`~EventModelHandler.load` reads (or, for the default
``sensors-ae``, first trains) the model, then :meth:`~EventModelHandler.score_batch` scores whole
batches with one model call. Nothing here imports Faust or Beam.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamdl.models.event_features import EventFeatures
from streamdl.models.event_models import (
    DEFAULT_EVENT_MODEL,
    ensure_sensor_model,
    find_model,
    model_versions,
    resolve_ref,
)

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256


@dataclass(frozen=True)
class EventModelInfo:
    """What an event model is: every score names ``name`` and ``version``."""

    name: str
    version: str
    kind: str
    """``"autoencoder"`` (anomaly scores) or ``"classifier"`` (probabilities)."""
    labels: tuple[str, ...]
    """Class names in output order (empty for an autoencoder)."""
    threshold: float | None
    """Anomaly scores above it are anomalies (``None`` for a classifier)."""
    feature_names: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    """Training facts from ``info.json``: records, metrics, seconds, library versions."""


@dataclass(frozen=True)
class EventScores:
    """One model call on ``n`` records."""

    anomaly: np.ndarray | None
    """``(n,)`` float32 anomaly scores (autoencoder), else ``None``."""
    probabilities: np.ndarray | None
    """``(n, len(labels))`` float32 class probabilities (classifier), else ``None``."""


class EventModelHandler:
    """Load an event model once, then score batches of records from any thread.

    The batch function is one ``tf.function`` with an unknown batch dimension: traced once during
    :meth:`load`, never again whatever the batch size. Batches over ``batch_size`` run in chunks.
    """

    def __init__(self, locate: Callable[[], Path], *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
        self._locate = locate
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._info: EventModelInfo | None = None
        self._features: EventFeatures | None = None
        self._fn: Callable[[tf.Tensor], tf.Tensor] | None = None
        self.folder: Path | None = None
        self.trace_count = 0
        """How often the batch function was traced: once during :meth:`load`, never after."""

    def load(self) -> None:
        """Find (or train) the model, read it and trace the batch function (idempotent)."""
        import keras
        import tensorflow as tf

        with self._lock:
            if self._fn is not None:
                return
            folder = self._locate()
            saved = json.loads((folder / "info.json").read_text(encoding="utf-8"))
            features = EventFeatures.from_json((folder / "features.json").read_text(encoding="utf-8"))
            model = keras.saving.load_model(folder / "model.keras", compile=False)
            kind = saved["kind"]
            width = len(features.feature_names)
            numeric, missing, context = features.numeric_columns, features.missing_columns, features.context_columns
            scale = float(saved.get("score_scale") or 1.0)

            @tf.function(input_signature=[tf.TensorSpec((None, width), tf.float32, name="features")])
            def run(x: tf.Tensor) -> tf.Tensor:
                self.trace_count += 1  # Python side effect: runs only while tracing
                if kind == "classifier":
                    return tf.cast(model(x, training=False), tf.float32)
                reconstruction = model({"features": x, "context": x[:, context.start : context.stop]}, training=False)
                present = 1.0 - x[:, missing.start : missing.stop]
                squared = present * tf.square(tf.cast(reconstruction, tf.float32) - x[:, numeric.start : numeric.stop])
                errors = tf.reduce_sum(squared, axis=1) / tf.maximum(tf.reduce_sum(present, axis=1), 1.0)
                return errors / scale

            run(tf.zeros((1, width), tf.float32))  # trace now, never while serving
            extra = {
                k: saved[k]
                for k in ("train_records", "metrics", "epochs", "seed", "train_seconds", "versions")
                if k in saved
            }
            self._info = EventModelInfo(
                name=saved["name"],
                version=folder.name,
                kind=kind,
                labels=tuple(saved.get("labels") or ()),
                threshold=saved.get("threshold"),
                feature_names=tuple(features.feature_names),
                extra=extra,
            )
            self._features, self.folder, self._fn = features, folder, run
            logger.info("loaded event model %s version %s (%s, %d features)", self._info.name, folder.name, kind, width)

    def info(self) -> EventModelInfo:
        """Describe the model (after :meth:`load`)."""
        if self._info is None:
            raise RuntimeError("call load() before info()")
        return self._info

    def score_batch(self, records: Iterable[Any]) -> EventScores:
        """Anomaly scores or class probabilities of ``records``
        (``EventRecord`` s, parsed events, tuples, JSON dicts)."""
        import tensorflow as tf

        if self._fn is None or self._info is None or self._features is None:
            raise RuntimeError("call load() before score_batch()")
        x = self._features.transform(records)
        classifier = self._info.kind == "classifier"
        out = np.zeros((len(x), len(self._info.labels)) if classifier else (len(x),), np.float32)
        for start in range(0, len(x), self.batch_size):
            out[start : start + self.batch_size] = self._fn(tf.constant(x[start : start + self.batch_size])).numpy()
        return (
            EventScores(anomaly=None, probabilities=out) if classifier else EventScores(anomaly=out, probabilities=None)
        )


def load_event_handler(ref: str, state_dir: Path, *, batch_size: int = DEFAULT_BATCH_SIZE) -> EventModelHandler:
    """A handler for ``ref`` (``"name"``: the latest version, or ``"name:version"``); call its ``load()`` next.

    The reference is checked now: ``ValueError`` when malformed, :class:`~streamdl.models.errors.ModelNotFound`
    (listing the models there are) when no such model or version is saved. The default
    ``"sensors-ae"`` is trained by ``load()`` when it has no version yet.
    """
    state_dir = Path(state_dir)
    name, version = resolve_ref(ref)
    if name == DEFAULT_EVENT_MODEL and version in (None, "1") and not model_versions(name, state_dir):
        return EventModelHandler(lambda: ensure_sensor_model(state_dir), batch_size=batch_size)
    folder = find_model(ref, state_dir)
    return EventModelHandler(lambda: folder, batch_size=batch_size)
