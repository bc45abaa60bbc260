"""Versions beside the champion on the image stream: a **shadow** (scored on every micro-batch, never served) and a
**canary** (serves the ids whose stable hash falls below its fraction).

Both are registry roles (MLflow aliases ``shadow`` and ``canary``, tag ``canary_fraction``) announced on the
model-updates topic; the hot-swap follower (:mod:`streamdl.streams.agents.hot_swap`) loads the version, the image
pipeline checks it on its warm-up batch and hands it to :class:`Sides`, and it takes effect at the start of the
next micro-batch, as a promotion does.

Cost per micro-batch (:func:`score`): a version on the champion's featurizer runs its head alone on the
champion's embeddings (one small call); any other shadow runs its whole model on the batch's pixels (a second
featurizer pass, as costly as the champion's own call).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streamdl.models.handler import BatchResult, ModelHandler, ModelInfo
from streamdl.settings import Settings

logger = logging.getLogger(__name__)

SHADOW, CANARY = "shadow", "canary"


def id_share(item_id: str) -> float:
    """Where ``item_id`` falls in [0, 1): the first 8 bytes of its BLAKE2b hash, the same in every worker, process
    and restart (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def in_canary(item_id: str, fraction: float) -> bool:
    """Whether the canary serves ``item_id``: its share falls below ``fraction``."""
    return id_share(item_id) < fraction


def shadow_index(settings: Settings) -> str:
    """The index of the shadow predictions (one document per image id; the label join reads it by id)."""
    return f"{settings.index_prefix}images-shadow"


@dataclass(frozen=True)
class Side:
    """A loaded version running beside the champion."""

    role: str
    handler: ModelHandler
    info: ModelInfo
    shares_featurizer: bool
    """Its head sits on the champion's featurizer: it is scored on the champion's embeddings."""
    fraction: float = 0.0
    """A canary's share of the ids."""


def score(side: Side, embeddings: np.ndarray, pixels: Callable[[], np.ndarray]) -> BatchResult:
    """``side``'s outputs for the rows whose champion embeddings are ``embeddings``: its head alone on them when
    it shares the featurizer (one small call), else its whole model on ``pixels()``."""
    if side.shares_featurizer:
        classify = getattr(side.handler, "classify_embeddings", None)
        probabilities = classify(embeddings) if classify is not None else None
        if probabilities is not None:
            return BatchResult(embeddings, np.asarray(probabilities, np.float32))
    return side.handler.predict_batch(pixels())


class Sides:
    """The shadow and the canary of one pipeline, and the changes waiting for the next micro-batch."""

    def __init__(self) -> None:
        self.current: dict[str, Side] = {}
        self._pending: dict[str, Side | None] = {}
        self._lock = threading.Lock()

    def get(self, role: str) -> Side | None:
        return self.current.get(role)

    def settled(self, role: str, version: str | None, fraction: float = 0.0) -> bool:
        """Whether ``role`` is (or is about to be) ``version`` with ``fraction`` already; ``None``: no version."""
        with self._lock:
            side = self._pending[role] if role in self._pending else self.current.get(role)
        if side is None:
            return version is None
        return side.info.version == version and (role != CANARY or side.fraction == fraction)

    def offer(self, role: str, side: Side | None) -> None:
        """``side`` takes ``role`` (``None``: the role ends) from the next micro-batch on."""
        with self._lock:
            self._pending[role] = side

    def apply(self, champion: str) -> list[tuple[str, str | None, str | None]]:
        """At the start of a micro-batch: the waiting changes take effect; a side whose version is now the champion
        ends. Returns ``(role, old version, new version)`` of each change."""
        with self._lock:
            pending, self._pending = self._pending, {}
        changes = []
        for role, side in pending.items():
            old = self.current.pop(role, None)
            if side is not None:
                self.current[role] = side
            changes.append((role, old.info.version if old else None, side.info.version if side else None))
        for role, side in list(self.current.items()):
            if side.info.version == champion:
                del self.current[role]
                changes.append((role, champion, None))
        return changes
