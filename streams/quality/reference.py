"""A version's drift reference, computed from its validation split when it is registered and saved with it.

Whoever registers a version (``streamdl retrain`` and the Python API's ``Head.register``, the base digits
model, the quality demo's bad head) runs the version on its validation images and saves what the worker
would have seen: the predicted-class histogram, the top-class confidence histogram and a reservoir of
``drift_reservoir_size`` unit-length embeddings (:class:`~streamdl.streams.quality.drift.Sample`), as the
MLflow artifact ``drift/reference.json`` of the version (:meth:`Registry.log_reference`). An event model
version (``streamdl train events``) saves its per-feature reference there the same way
(:func:`event_reference`). Workers load it when a version's first prediction arrives
(:func:`registry_references`, :func:`feature_references`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamdl.settings import Settings
from streamdl.streams.quality.drift import References, Sample
from streamdl.streams.quality.feature_drift import FeatureReference, fit_reference

logger = logging.getLogger(__name__)


def prediction_reference(
    labels: Sequence[str], probabilities: np.ndarray, embeddings: np.ndarray | None, capacity: int
) -> dict[str, Any]:
    """The reference of a version from its outputs on validation images: ``probabilities`` ``(n, len(labels))``
    and ``embeddings`` ``(n, d)`` (the featurizer's, as the worker indexes them; ``None`` without one)."""
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels) or not len(probabilities):
        raise ValueError(f"probabilities of shape {probabilities.shape} for {len(labels)} labels")
    sample = Sample(capacity, seed=1)
    predicted = probabilities.argmax(axis=1)
    for i, j in enumerate(predicted):
        sample.add(str(labels[j]), float(probabilities[i, j]), None if embeddings is None else embeddings[i])
    return {**sample.as_json(), "source": "validation split"}


def head_reference(model: Any, labels: Sequence[str], embeddings: np.ndarray, capacity: int) -> dict[str, Any]:
    """The reference of a classifier head (a Keras model over the featurizer's embeddings) from the
    embeddings of its validation images."""
    probabilities = np.asarray(model.predict(np.asarray(embeddings, np.float32), batch_size=1024, verbose=0))
    return prediction_reference(labels, probabilities, embeddings, capacity)


def digits_reference(settings: Settings) -> dict[str, Any]:
    """The base digits model's reference: its held-out split (the digits it was not trained on)."""
    from streamdl.models.catalog import load_handler
    from streamdl.models.digits import LABELS, split_digits

    _, holdout, _, _ = split_digits()
    handler = load_handler(settings.model_name, state_dir=settings.state_dir, batch_size=256, weights=settings.weights)
    handler.load()
    out = handler.predict_batch(holdout)
    return prediction_reference(list(LABELS), out.probabilities, out.embeddings, settings.drift_reservoir_size)


def event_reference(settings: Settings, records: Sequence[Any], folder: Path) -> dict[str, Any]:
    """An event model version's reference (:mod:`~streamdl.streams.quality.feature_drift`): its training
    ``records`` (the autoencoder holds none out) scored by the saved model in ``folder``, as a worker would."""
    from streamdl.models.event_features import EventRecord
    from streamdl.models.event_handler import EventModelHandler

    handler = EventModelHandler(lambda: Path(folder))
    handler.load()
    rows = [EventRecord.of(r) for r in records]
    anomaly = handler.score_batch(rows).anomaly
    drift_rows = [
        (r.numeric, r.categorical, None if anomaly is None else float(anomaly[i])) for i, r in enumerate(rows)
    ]
    reference = fit_reference(drift_rows, settings.drift_max_features, settings.drift_top_categories)
    return {**reference.as_json(), "source": "training events"}


def feature_references(settings: Settings, registry: Any = None) -> References:
    """The worker's loader of event model versions' saved references (see :func:`registry_references`)."""
    return registry_references(
        settings, registry, lambda saved: FeatureReference.from_json(saved, settings.drift_max_features)
    )


def registry_references(
    settings: Settings, registry: Any = None, parse: Callable[[dict[str, Any]], Any] | None = None
) -> References:
    """The worker's loader of saved references, made by ``parse`` (default: an image version's
    :class:`Sample`): ``None`` (the first-predictions fallback, logged) when there is no registry, the version
    has no reference, or it cannot be read."""
    if parse is None:

        def parse(saved: dict[str, Any]) -> Sample:
            return Sample.from_json(saved, settings.drift_reservoir_size)

    def load(name: str, version: str) -> Any:
        nonlocal registry
        from streamdl.models.errors import ModelNotFound

        try:
            if registry is None:
                from streamdl.models.registry import Registry

                if not Registry.exists(settings):
                    logger.info("drift: no registry; %s v%s is judged against its first predictions", name, version)
                    return None
                registry = Registry.from_settings(settings)
            try:
                saved = registry.reference(name, version)
            except ModelNotFound:  # a model or version served without being registered
                saved = None
            if saved is None:
                logger.info(
                    "drift: %s v%s has no saved reference; it is judged against its first %d predictions",
                    name,
                    version,
                    settings.drift_reference_size,
                )
                return None
            loaded = parse(saved)
        except Exception as exc:  # noqa: BLE001 - an unreadable artifact, an outage: the fallback
            logger.warning(
                "drift: the saved reference of %s v%s could not be read (%s); using its first %d predictions",
                name,
                version,
                exc,
                settings.drift_reference_size,
            )
            return None
        logger.info("drift: %s v%s is judged against its saved reference (%d predictions)", name, version, loaded.n)
        return loaded

    return load
