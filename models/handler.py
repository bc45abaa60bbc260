"""The one model-handler shape shared by the stream workers and the Beam job.

A handler is created cheaply, loads its model once (:meth:`ModelHandler.load`), then
predicts whole batches (:meth:`ModelHandler.predict_batch`) and describes itself
(:meth:`ModelHandler.info`). Nothing here imports Faust or Beam.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """What a model is: every prediction and document names ``name`` and ``version``."""

    name: str
    version: str
    input_size: tuple[int, int]
    """Height and width the model takes."""
    channels: int
    """1 (grayscale) or 3 (RGB): what the decoder must produce."""
    embedding_size: int
    """Length of the pooled embedding (0 when the model has no featurizer)."""
    labels: tuple[str, ...] = ()
    """Class names in output order (empty for a pure featurizer)."""
    extra: dict[str, str] = field(default_factory=dict)
    """Free-form facts (source file, application name, preprocessing)."""


@dataclass(frozen=True)
class BatchResult:
    """One model call on a batch of ``n`` images."""

    embeddings: np.ndarray
    """``(n, embedding_size)`` float32, or ``(n, 0)`` when the model has no featurizer."""
    probabilities: np.ndarray
    """``(n, len(labels))`` float32 class probabilities, or ``(n, 0)`` for a pure featurizer."""

    def top_k(self, labels: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
        """Per row, the ``k`` most probable ``(label, probability)`` pairs, best first."""
        if self.probabilities.shape[1] == 0:
            return [[] for _ in range(len(self.probabilities))]
        k = min(k, self.probabilities.shape[1])
        order = np.argsort(-self.probabilities, axis=1)[:, :k]
        return [[(labels[j], float(row[j])) for j in idx] for row, idx in zip(self.probabilities, order)]


@runtime_checkable
class ModelHandler(Protocol):
    """Load once, predict a batch, describe yourself."""

    def load(self) -> None:
        """Load weights and build the batch function; called once, before the first batch."""

    def info(self) -> ModelInfo:
        """Describe the model (valid after :meth:`load`)."""

    def predict_batch(self, images: np.ndarray) -> BatchResult:
        """Run featurizer and head in one call on ``(n, h, w, channels)`` uint8 images."""
