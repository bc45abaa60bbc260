"""The work of the images agent on one micro-batch, free of Faust so it can be driven directly.

Lifecycle: :meth:`ImagePipeline.setup` (load the model, create the index, check the services;
fails fast); per micro-batch :meth:`ImagePipeline.compute` (CPU: decode, model, outputs), then
:meth:`ImagePipeline.index_documents` (neighbour lookups, the shadow's and the champion's documents, the
alerts), then :meth:`~streamdl.streams.pipelines.writer.MicroBatchPipeline.publish` (Kafka): three steps a worker
overlaps across batches (:mod:`~streamdl.streams.pipelines.stage`); none raises for bad input;
:meth:`ImagePipeline.close`.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from elasticsearch import Elasticsearch

from streamdl.alert_rules import Rule
from streamdl.connectors.es_bulk import bulk_index
from streamdl.connectors.es_client import ensure_index
from streamdl.connectors.es_mappings import images_index, shadow_images_index
from streamdl.connectors.setup import ensure_fixed_index
from streamdl.models.decode import DecodeError, DecodeLimits, decode_with_thumbnail, thumbnail_jpeg
from streamdl.models.handler import BatchResult, ModelHandler, ModelInfo
from streamdl.records import Document, InMessage, iso, to_json
from streamdl.records import image_id as message_image_id
from streamdl.settings import Settings
from streamdl.streams.pipelines import metrics
from streamdl.streams.pipelines.alerts import Alert, Scored
from streamdl.streams.pipelines.isolate import call_isolating
from streamdl.streams.pipelines.neighbours import NeighbourCheck
from streamdl.streams.pipelines.roles import CANARY, SHADOW, Side, Sides, in_canary, score, shadow_index
from streamdl.streams.pipelines.sinks import Sink
from streamdl.streams.pipelines.stage import Computed
from streamdl.streams.pipelines.writer import MicroBatchPipeline

logger = logging.getLogger(__name__)


def embedding_space(info: ModelInfo) -> str:
    """The featurizer behind the model (``name-version``): one images index per embedding space, so a
    new classifier head on the same featurizer keeps writing to the same index."""
    return info.extra.get("featurizer") or f"{info.name}-{info.version}"


def model_ref(name: str) -> str:
    """What loads the model again from anywhere: a file's absolute path, else the name."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name


@dataclass
class _Decoded:
    msg: InMessage
    image_id: str
    pixels: np.ndarray
    thumbnail: bytes
    """JPEG of the image in its own colours, from the same decode."""


class ImagePipeline(MicroBatchPipeline):
    """Decode → featurize and classify (one model call) → index → publish predictions and dead letters; a shadow
    version is scored beside the champion and a canary serves its share of ids (:mod:`.roles`)."""

    stream = "images"
    processed = metrics.IMAGES_PROCESSED

    def __init__(
        self,
        settings: Settings,
        handler: ModelHandler,
        rules: Sequence[Rule] = (),
        *,
        publish: bool = True,
        sinks: Sequence[Sink] = (),
    ) -> None:
        """``publish=False`` (a reindex) writes documents only: no predictions, alerts or dead letters again."""
        super().__init__(settings, rules, publish=publish, sinks=sinks)
        self.handler = handler
        self.info: ModelInfo | None = None
        self.neighbours: NeighbourCheck | None = None
        self.limits = DecodeLimits(max_bytes=settings.max_message_bytes, max_pixels=settings.max_pixels)
        self._pending: ModelHandler | None = None
        self._swap_lock = threading.Lock()
        self._recent: list[np.ndarray] = []
        self.sides = Sides()
        self.shadow_index = shadow_index(settings)

    # --- lifecycle -------------------------------------------------------------------
    def prepare(self, es: Elasticsearch) -> str:
        """Load the model and make sure the images index of its embedding space exists."""
        self.handler.load()
        self.info = info = self.handler.info()
        meta = {
            "model_name": info.name,
            "model_version": info.version,
            "model_ref": model_ref(self.settings.model_name),
        }
        body = images_index(info.embedding_size, meta)
        index = ensure_index(es, self.settings.alias("images"), embedding_space(info), body)
        es.indices.put_mapping(index=index, meta=body["mappings"]["_meta"])  # also an index made before _meta existed
        if self.publish_outputs:
            ensure_fixed_index(es, self.shadow_index, shadow_images_index())
        if self.settings.similarity_alerts and self.publish_outputs:
            self.neighbours = NeighbourCheck(self.settings, es, index)
        metrics.MODEL_VERSION.labels("images", info.name, info.version).set(1)
        logger.info(
            "image pipeline ready model=%s version=%s index=%s embedding=%d",
            info.name,
            info.version,
            index,
            info.embedding_size,
        )
        return index

    # --- hot-swap (streamdl.streams.agents.hot_swap) ---------------------------------------------------
    def settle(self, version: str) -> bool:
        """An announcement for ``version`` arrived: when that version serves already, withdraw any candidate
        still waiting for the next micro-batch (a later announcement wins over an earlier one) and return
        ``True``; else ``False`` (the caller loads it)."""
        with self._swap_lock:
            if version != self.info.version:
                return False
            withdrawn, self._pending = self._pending, None
        if withdrawn is not None:
            logger.info(
                "model version %s was announced after version %s: keeping %s, %s is withdrawn",
                version,
                withdrawn.info().version,
                version,
                withdrawn.info().version,
            )
        return True

    def warmup_batch(self) -> np.ndarray:
        """The last images this worker decoded (zeros before the first batch)."""
        recent = self._recent
        if recent:
            return np.stack(recent)
        return np.zeros((1, *self.info.input_size, self.info.channels), np.uint8)

    def offer(self, candidate: ModelHandler) -> None:
        """Check a loaded candidate on the warm-up batch; it serves from the next micro-batch on (replacing a
        candidate still waiting), or is refused."""
        from streamdl.streams.agents.hot_swap import check_candidate

        version = candidate.info().version
        reason = check_candidate(candidate, self.handler, self.warmup_batch())
        if reason is not None:
            self.refuse(version, reason)
            return
        with self._swap_lock:
            self._pending = candidate
        logger.info("model version %s passed its warm-up check; it serves from the next micro-batch", version)

    def refuse(self, version: str, reason: str) -> None:
        """Keep the current model and raise a ``model_refused`` alert."""
        info = self.info
        logger.error(
            "refusing model version %s of %s, keeping version %s: %s", version, info.name, info.version, reason
        )
        now = time.time()
        alert = Alert(
            rule="model_refused",
            kind="model_refused",
            severity="critical",
            subject_id=f"{info.name}:{version}",
            model_name=info.name,
            model_version=info.version,
            evidence={"refused_version": version, "reason": reason},
            ts=now,
            window_start=now,
            raised_at=now,
        )
        self.writer.raise_alert(alert)

    def settle_role(self, role: str, version: str | None, fraction: float = 0.0) -> bool:
        """A ``shadow`` or ``canary`` announcement: ``True`` when nothing is to load (the role is that version
        already; it ends; or only the canary's fraction changes: then from the next micro-batch)."""
        if self.sides.settled(role, version, fraction):
            return True
        if version is None:
            self.sides.offer(role, None)
            logger.info("the %s version ends from the next micro-batch", role)
            return True
        side = self.sides.get(role)
        if side is not None and side.info.version == version:
            self.sides.offer(role, dataclasses.replace(side, fraction=fraction))
            logger.info("the %s version %s serves %g of the ids from the next micro-batch", role, version, fraction)
            return True
        return False

    def offer_role(self, role: str, candidate: ModelHandler, fraction: float = 0.0) -> None:
        """Check a loaded ``shadow`` or ``canary`` on the warm-up batch; it runs from the next micro-batch on, or is
        refused (``model_refused`` alert). A canary writes the champion's images index, so it needs the champion's
        featurizer; a shadow needs only the same input."""
        from streamdl.streams.agents.hot_swap import check_candidate

        info = candidate.info()
        shares = embedding_space(info) == embedding_space(self.info)
        if role == CANARY and not shares:
            theirs, ours = embedding_space(info), embedding_space(self.info)
            reason = f"a canary writes the champion's images index, so it needs its featurizer {ours}, not {theirs}"
        else:
            reason = check_candidate(candidate, self.handler, self.warmup_batch(), same_embedding=role == CANARY)
        if reason is not None:
            self.refuse(info.version, f"as the {role}: {reason}")
            return
        self.sides.offer(role, Side(role, candidate, info, shares, fraction))
        logger.info("version %s passed its warm-up check; the %s from the next micro-batch", info.version, role)

    def _swap_if_pending(self) -> None:
        with self._swap_lock:
            candidate, self._pending = self._pending, None
            if candidate is not None:
                old = self.info
                self.handler, self.info = candidate, candidate.info()
        if candidate is not None:
            metrics.MODEL_VERSION.labels("images", old.name, old.version).set(0)
            metrics.MODEL_VERSION.labels("images", self.info.name, self.info.version).set(1)
            logger.info(
                "swapped model %s version %s -> %s between micro-batches", old.name, old.version, self.info.version
            )
        for role, old_version, new_version in self.sides.apply(self.info.version):
            if old_version is not None:
                metrics.MODEL_ROLE.labels("images", self.info.name, old_version, role).set(0)
            if new_version is not None:
                metrics.MODEL_ROLE.labels("images", self.info.name, new_version, role).set(1)
            logger.info("%s version %s -> %s between micro-batches", role, old_version or "none", new_version or "none")

    # --- one micro-batch -------------------------------------------------------------
    def compute(self, batch: Sequence[InMessage]) -> Computed:
        """Stage 1, CPU only: decode, one model call, build documents, predictions and dead letters.
        A model version that passed its warm-up check is swapped in here, before the batch."""
        self._swap_if_pending()
        computed = Computed(size=len(batch))
        t0 = time.perf_counter()
        decoded = self._decode(batch, computed)
        if decoded:
            self._recent = [d.pixels for d in decoded[:16]]  # stacked only when a model update needs a warm-up batch
        t1 = time.perf_counter()
        results = self._predict(decoded, computed)
        t2 = time.perf_counter()
        if results is None:
            return computed
        processed = time.time()
        served = self._canary(decoded, results, computed)
        per_image = ((t1 - t0) / len(decoded), (t2 - t1) / len(decoded))
        t3 = time.perf_counter()
        for info, rows, part in served:
            self._outputs([decoded[i] for i in rows], part, computed, processed, per_image, info)
        computed.seconds.update(decode=t1 - t0, model=t2 - t1, documents=time.perf_counter() - t3)
        self._shadow(decoded, results, served, computed, processed)
        return computed

    def index_documents(self, computed: Computed) -> Computed:
        """Stage 2, Elasticsearch only: neighbour lookups (they find the earlier batches' documents), the
        shadow's documents, then the champion's (:class:`BatchWriter`); returns once all are acknowledged."""
        t0 = time.perf_counter()
        if self.neighbours is not None:
            for image_id, found in self.neighbours.findings(computed.documents).items():
                computed.scored[image_id].findings = found
        computed.seconds["neighbours"] = time.perf_counter() - t0
        if computed.shadow:  # before the champion's documents: a label that finds those finds the shadow's too
            docs = [(d.id, d.body) for d in computed.shadow]
            for rejected in bulk_index(self.es, self.shadow_index, docs, should_stop=self._stopping.is_set):
                logger.error("shadow prediction %s refused by Elasticsearch: %s", rejected.doc_id, rejected.reason)
                computed.shadow_predictions.pop(rejected.doc_id, None)
        return super().index_documents(computed)

    def _decode(self, batch: Sequence[InMessage], computed: Computed) -> list[_Decoded]:
        size, channels = self.info.input_size, self.info.channels
        out: list[_Decoded] = []
        seen: dict[str, int] = {}
        for msg in batch:
            image_id = message_image_id(msg)  # the key, or a content hash when the producer gave none
            try:
                pixels, thumbnail = decode_with_thumbnail(
                    msg.value or b"", size, channels, self.limits, self.settings.thumbnail_side
                )
            except DecodeError as exc:
                computed.refuse(msg, exc.reason, str(exc), "decode")
                continue
            decoded = _Decoded(msg, image_id, pixels, thumbnail or thumbnail_jpeg(pixels))
            if image_id in seen:  # the same id twice in one batch: the later message wins, as in the index
                out[seen[image_id]] = decoded
                continue
            seen[image_id] = len(out)
            out.append(decoded)
        return out

    def _predict(self, decoded: list[_Decoded], computed: Computed) -> BatchResult | None:
        def refuse(item: _Decoded, error: Exception) -> None:
            reason = f"the model failed on this image: {type(error).__name__}: {error}"
            computed.refuse(item.msg, "model_error", reason, "model")

        return call_isolating(
            decoded,
            lambda items: self.handler.predict_batch(np.stack([d.pixels for d in items])),
            lambda rows: BatchResult(
                np.concatenate([r.embeddings for r in rows]), np.concatenate([r.probabilities for r in rows])
            ),
            refuse,
            "images",
        )

    def _canary(
        self, decoded: list[_Decoded], results: BatchResult, computed: Computed
    ) -> list[tuple[ModelInfo, list[int], BatchResult]]:
        """Which version serves which rows, with its outputs for them: the canary's share of ids gets the canary's
        head on the champion's embeddings, the rest the champion. A canary that fails leaves its rows to the
        champion."""
        side, everyone = self.sides.get(CANARY), list(range(len(decoded)))
        rows = [i for i, d in enumerate(decoded) if side is not None and in_canary(d.image_id, side.fraction)]
        if not rows:
            return [(self.info, everyone, results)]
        t0 = time.perf_counter()
        try:
            canary = score(side, results.embeddings[rows], lambda: np.stack([decoded[i].pixels for i in rows]))
        except Exception:
            logger.exception("canary version %s failed on a batch; the champion served its ids", side.info.version)
            metrics.SIDE_ERRORS.labels(CANARY).inc()
            return [(self.info, everyone, results)]
        computed.seconds["canary"] = time.perf_counter() - t0
        chosen = set(rows)
        rest = [i for i in everyone if i not in chosen]
        champion = BatchResult(results.embeddings[rest], results.probabilities[rest])
        return [(self.info, rest, champion), (side.info, rows, canary)]

    def _shadow(
        self,
        decoded: list[_Decoded],
        results: BatchResult,
        served: list[tuple[ModelInfo, list[int], BatchResult]],
        computed: Computed,
        processed: float,
    ) -> None:
        """The shadow's prediction of every image, beside the version that served it: documents for the shadow
        index and JSON for the shadow topic; no :class:`Scored`, so no rule ever sees it. A shadow that fails
        costs this batch its shadow predictions only."""
        side = self.sides.get(SHADOW)
        if side is None or not decoded:
            return
        t0 = time.perf_counter()
        try:
            out = score(side, results.embeddings, lambda: np.stack([d.pixels for d in decoded]))
        except Exception:
            logger.exception("shadow version %s failed on a batch; no shadow predictions for it", side.info.version)
            metrics.SIDE_ERRORS.labels(SHADOW).inc()
            return
        top = out.top_k(side.info.labels, self.settings.top_k)
        server = {i: info.version for info, rows, _ in served for i in rows}
        common = {"role": SHADOW, "model_name": side.info.name, "model_version": side.info.version}
        processed_time = iso(processed)
        for i, item in enumerate(decoded):
            served_doc = computed.scored[item.image_id].fields  # the served document: the same message's facts
            label, confidence = top[i][0] if top[i] else (None, None)
            body = {
                "image_id": item.image_id,
                **common,
                "label": label,
                "score": confidence,
                "top_k": [{"label": lab, "probability": round(p, 6)} for lab, p in top[i]],
                "true_label": served_doc["true_label"],
                "served_version": server[i],
                "served_label": served_doc["label"],
                "kafka": served_doc["kafka"],
                "event_time": served_doc["event_time"],
                "processed_time": processed_time,
            }
            computed.shadow.append(Document(item.image_id, body))
            computed.shadow_predictions[item.image_id] = to_json(body)
        computed.seconds["shadow"] = time.perf_counter() - t0

    def _outputs(
        self,
        decoded: list[_Decoded],
        results: BatchResult,
        computed: Computed,
        processed: float,
        per_image: tuple[float, float],
        info: ModelInfo,
    ) -> None:
        if not decoded:
            return
        top = results.top_k(info.labels, self.settings.top_k)
        per_image_ms = {"decode": 1000 * per_image[0], "model": 1000 * per_image[1]}
        predictions = computed.predictions
        for i, item in enumerate(decoded):
            computed.messages[item.image_id] = item.msg
            msg = item.msg
            label, score = top[i][0] if top[i] else (None, None)
            event_time = iso(msg.timestamp_ms / 1000) if msg.timestamp_ms else None
            common = {
                "image_id": item.image_id,
                "label": label,
                "score": score,
                "true_label": msg.header("label"),
                "model_name": info.name,
                "model_version": info.version,
                "kafka": msg.coordinates,
                "event_time": event_time,
                "processed_time": iso(processed),
            }
            body = {
                **common,
                "embedding": results.embeddings[i],  # serialized once by the writer (orjson, numpy as lists)
                "top_k": [{"label": lab, "probability": p} for lab, p in top[i]],
                "source": msg.header("source"),
                "content_type": msg.header("content-type"),
                "thumbnail": base64.b64encode(item.thumbnail).decode(),
            }
            computed.documents.append(Document(item.image_id, body))
            computed.scored[item.image_id] = Scored(
                id=item.image_id,
                ts=(msg.timestamp_ms / 1000) if msg.timestamp_ms else processed,
                model_name=info.name,
                model_version=info.version,
                fields=body,
                top_k=top[i],
            )
            predictions[item.image_id] = to_json(
                {
                    **common,
                    "top_k": [{"label": lab, "probability": round(p, 6)} for lab, p in top[i]],
                    "timings_ms": {k: round(v, 3) for k, v in per_image_ms.items()},
                }
            )
