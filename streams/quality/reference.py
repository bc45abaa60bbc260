"""A version's drift reference, computed from its validation split when it is registered and saved with it.

Whoever registers a version (``streamdl retrain`` and the Python API's ``Head.register``, the base digits
model, the quality demo's bad head) runs the version on its validation images and saves what the worker
would have seen: the predicted-class histogram, the top-class confidence histogram and a reservoir of
``drift_reservoir_size`` unit-length embeddings (:class:`~streamdl.streams.quality.drift.Sample`), as the
MLflow artifact ``drift/reference.json`` of the version (:meth:`Registry.log_reference`). Workers load it
when a version's first prediction arrives (:func:`registry_references`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamdl.settings import Settings
from streamdl.streams.quality.drift import References, Sample

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


def registry_references(settings: Settings, registry: Any = None) -> References:
    """The worker's loader of saved references: ``None`` (the first-predictions fallback, logged) when there
    is no registry, the version has no reference, or it cannot be read."""

    def load(name: str, version: str) -> Sample | None:
        nonlocal registry
        try:
            if registry is None:
                from streamdl.models.registry import Registry

                if not Registry.exists(settings):
                    logger.info("drift: no registry; %s v%s is judged against its first predictions", name, version)
                    return None
                registry = Registry.from_settings(settings)
            saved = registry.reference(name, version)
            if saved is None:
                logger.info(
                    "drift: %s v%s has no saved reference; it is judged against its first %d predictions",
                    name,
                    version,
                    settings.drift_reference_size,
                )
                return None
            sample = Sample.from_json(saved, settings.drift_reservoir_size)
        except Exception as exc:  # noqa: BLE001 - not registered, an unreadable artifact, an outage: the fallback
            logger.warning(
                "drift: the saved reference of %s v%s could not be read (%s); using its first %d predictions",
                name,
                version,
                exc,
                settings.drift_reference_size,
            )
            return None
        logger.info("drift: %s v%s is judged against its saved reference (%d predictions)", name, version, sample.n)
        return sample

    return load
