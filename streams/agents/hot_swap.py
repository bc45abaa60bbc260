"""Hot-swap: the worker follows the model-updates topic and swaps in promoted versions between micro-batches.

Each worker reads the whole (compacted) model-updates topic with a consumer of its own that never
commits. A message for the served model with another version than the one in use is loaded in
this background thread, checked on a warm-up batch (the last images the worker decoded: outputs
finite, the same embedding size, one probability per label) and handed to the pipeline, which
swaps it in at the start of its next micro-batch: a batch is scored by one version, never two,
and every output names the version that made it. A version that fails the check is refused: the
worker keeps the old one and raises a ``model_refused`` alert.

The same topic carries the versions that run beside the champion (key ``name:shadow`` / ``name:canary``,
``{"name", "role", "version", "fraction"}``; ``version`` null ends the role): they are loaded and checked the
same way and take effect at the next micro-batch (:mod:`streamdl.streams.pipelines.roles`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from streamdl.models.handler import ModelHandler
from streamdl.settings import Settings
from streamdl.streams.agents.background import DaemonLoop

logger = logging.getLogger(__name__)


class Swappable(Protocol):
    def warmup_batch(self) -> np.ndarray: ...

    def offer(self, handler: ModelHandler) -> None: ...

    def settle(self, version: str) -> bool: ...

    def refuse(self, version: str, reason: str) -> None: ...

    def settle_role(self, role: str, version: str | None, fraction: float = 0.0) -> bool: ...

    def offer_role(self, role: str, candidate: ModelHandler, fraction: float = 0.0) -> None: ...


def registered_handler(settings: Settings, version: str | None = None) -> ModelHandler | None:
    """A handler for a registered version of the served model, or, without ``version``, for the
    champion; ``None`` when there is no registry or the champion is the base model itself."""
    from streamdl.models.catalog import load_handler
    from streamdl.models.registry import Registry

    if not Registry.exists(settings):
        return None  # no registry yet: nothing was ever retrained here
    registry = Registry.from_settings(settings)
    chosen = registry.show(settings.model_name, version) if version else registry.champion(settings.model_name)
    if chosen is None or (chosen.kind != "head" and version is None):
        return None
    head = registry.head_folder(chosen) / "head.keras" if chosen.kind == "head" else None  # a rollback to the base
    return load_handler(
        settings.model_name,
        state_dir=settings.state_dir,
        batch_size=settings.max_batch_size,
        weights=settings.weights,
        mixed_precision=settings.mixed_precision,
        head=head,
    )


def check_candidate(
    candidate: ModelHandler, current: ModelHandler, batch: np.ndarray, *, same_embedding: bool = True
) -> str | None:
    """Why ``candidate`` must not replace ``current`` (``None`` when it may), judged on ``batch``.
    ``same_embedding=False``: a shadow, which writes no vectors, may have an embedding of another size."""
    new, old = candidate.info(), current.info()
    if same_embedding and new.embedding_size != old.embedding_size:
        return f"embedding size {new.embedding_size} differs from the index's {old.embedding_size}"
    if (new.input_size, new.channels) != (old.input_size, old.channels):
        return f"input {new.input_size}x{new.channels} differs from {old.input_size}x{old.channels}"
    try:
        result = candidate.predict_batch(batch)
    except Exception as exc:  # noqa: BLE001 - any failure refuses the candidate
        return f"the warm-up batch failed: {type(exc).__name__}: {exc}"
    n = len(batch)
    if result.probabilities.shape != (n, len(new.labels)) or result.embeddings.shape != (n, new.embedding_size):
        return (
            f"warm-up outputs have shapes {result.embeddings.shape} and {result.probabilities.shape}, expected "
            f"{(n, new.embedding_size)} and {(n, len(new.labels))}"
        )
    if not (np.isfinite(result.probabilities).all() and np.isfinite(result.embeddings).all()):
        return "warm-up outputs are not finite"
    return None


class ModelFollower(DaemonLoop):
    """A daemon thread reading the model-updates topic for one pipeline."""

    thread_name = "model-updates"

    def __init__(
        self,
        settings: Settings,
        pipeline: Swappable,
        load: Callable[[Settings, str], ModelHandler | None] = registered_handler,
    ) -> None:
        super().__init__()
        self.settings, self.pipeline, self.load = settings, pipeline, load

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        topic = self.settings.topic("model-updates")
        from streamdl.connectors.kafka_config import kafka_config

        consumer = Consumer(
            kafka_config(
                self.settings,
                {
                    "enable.auto.commit": False,
                    "group.id": f"{self.settings.consumer_group}-updates-{uuid.uuid4().hex[:8]}",
                },
            )
        )
        try:
            partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                self.handle(msg.value())
        except Exception:
            logger.exception("the model-updates follower stopped; this worker keeps its current model")
        finally:
            consumer.close()

    def handle(self, value: bytes | None) -> None:
        """One model-updates message."""
        try:
            update: dict[str, Any] = json.loads(value or b"")
            name, version = str(update["name"]), str(update["version"])
        except (ValueError, KeyError, TypeError):
            logger.warning(
                "ignoring a model-updates message that is not {name, version} JSON: %r", (value or b"")[:200]
            )
            return
        if update.get("role") is not None:
            self.handle_role(update)
            return
        if name != self.settings.model_name or self.pipeline.settle(version):
            return  # another model, or this version serves already (a candidate still waiting is withdrawn)
        logger.info("model update: %s version %s; loading it in the background", name, version)
        candidate = self._load(version, "")
        if candidate is not None:
            self.pipeline.offer(candidate)

    def _load(self, version: str, role: str) -> ModelHandler | None:
        """The loaded handler of ``version``, or ``None`` after refusing it (a ``model_refused`` alert)."""
        try:
            candidate = self.load(self.settings, version)
            if candidate is None:
                raise ValueError(f"version {version} is not a registered head of {self.settings.model_name}")
            candidate.load()
        except Exception as exc:  # noqa: BLE001
            self.pipeline.refuse(
                version, f"{role and f'as the {role}: '}could not load it: {type(exc).__name__}: {exc}"
            )
            return None
        return candidate

    def handle_role(self, update: dict[str, Any]) -> None:
        """A ``shadow`` or ``canary`` announcement: load the version and offer it, or end the role."""
        from streamdl.streams.pipelines.roles import CANARY, SHADOW

        role, version = update.get("role"), update.get("version")
        try:
            fraction = float(update.get("fraction") or 0.0)
        except (TypeError, ValueError):
            fraction = -1.0
        if role not in (SHADOW, CANARY) or (role == CANARY and version is not None and not 0 < fraction < 1):
            logger.warning("ignoring a model-updates role message with a bad role or fraction: %r", update)
            return
        version = None if version is None else str(version)
        if update["name"] != self.settings.model_name or self.pipeline.settle_role(role, version, fraction):
            return
        logger.info("model update: %s version %s as the %s; loading it", update["name"], version, role)
        candidate = self._load(version, role)
        if candidate is not None:
            self.pipeline.offer_role(role, candidate, fraction)
