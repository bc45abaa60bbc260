"""The work of the images agent on one micro-batch, free of Faust so it can be driven directly.

Lifecycle: :meth:`ImagePipeline.setup` (load the model, create the index, check the services;
fails fast); per micro-batch :meth:`ImagePipeline.compute` (CPU: decode, model, outputs) then
:meth:`ImagePipeline.write` (I/O: index, publish) -- two stages so a worker can overlap one
batch's writing with the next batch's computing; neither raises for bad input;
:meth:`ImagePipeline.close`.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from connectors.es_bulk import bulk_index
from connectors.es_client import check_elasticsearch, ensure_index, es_client
from connectors.es_mappings import alerts_index, images_index
from connectors.setup import INDEX_VERSION as ALERTS_INDEX_VERSION
from connectors.kafka_admin import admin_client, check_kafka
from connectors.kafka_producer import Deliveries, make_producer
from models.decode import DecodeError, DecodeLimits, decode_image, thumbnail_jpeg
from models.handler import BatchResult, ModelHandler, ModelInfo
from streamdl.settings import Settings
from streams import metrics
from streams.records import InMessage, dead_letter, iso, message_id, to_json
from streams.similarity import Alert, NeighbourCheck

logger = logging.getLogger(__name__)


def model_ref(name: str) -> str:
    """What loads the model again from anywhere: a file's absolute path, else the name."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name


@dataclass
class BatchReport:
    """What one micro-batch did."""

    size: int = 0
    indexed: int = 0
    alerts: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def dead(self, reason: str) -> None:
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1


@dataclass
class Computed:
    """Stage 1's output for one micro-batch: everything stage 2 writes."""

    size: int
    docs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    predictions: dict[str, bytes] = field(default_factory=dict)
    messages: dict[str, InMessage] = field(default_factory=dict)
    dead: list[tuple[InMessage, str, str, str]] = field(default_factory=list)
    """``(message, reason code, reason, stage)`` of each dead letter."""
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Decoded:
    msg: InMessage
    image_id: str
    pixels: np.ndarray


class ImagePipeline:
    """Decode → featurize and classify (one model call) → index → publish predictions and dead letters."""

    def __init__(self, settings: Settings, handler: ModelHandler, *, publish: bool = True) -> None:
        """``publish=False`` (a reindex) writes documents only: no predictions, alerts or dead letters again."""
        self.settings = settings
        self.handler = handler
        self.publish = publish
        self.limits = DecodeLimits(max_bytes=settings.max_message_bytes, max_pixels=settings.max_pixels)
        self.predictions_topic = settings.topic("predictions")
        self.dlq_topic = settings.topic("dlq")
        self.alerts_topic = settings.topic("alerts")
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------
    def setup(self) -> None:
        """Load the model, make sure the images index for its version exists, check Kafka. Fails fast."""
        check_kafka(admin_client(self.settings), self.settings)
        self.es = es_client(self.settings)
        check_elasticsearch(self.es, self.settings)
        self.handler.load()
        self.info: ModelInfo = self.handler.info()
        body = images_index(self.info.embedding_size, {"model_name": self.info.name, "model_version": self.info.version,
                                                       "model_ref": model_ref(self.settings.model_name)})
        self.index = ensure_index(self.es, self.settings.alias("images"), f"{self.info.name}-{self.info.version}", body)
        self.es.indices.put_mapping(index=self.index, meta=body["mappings"]["_meta"])  # also an index made before _meta existed
        ensure_index(self.es, self.settings.alias("alerts"), ALERTS_INDEX_VERSION, alerts_index())
        self.neighbours = NeighbourCheck(self.settings, self.es, self.index, self.info.name, self.info.version) \
            if self.settings.similarity_alerts and self.publish else None
        self.deliveries = Deliveries(make_producer(self.settings))
        metrics.MODEL_VERSION.labels(self.info.name, self.info.version).set(1)
        logger.info("image pipeline ready model=%s version=%s index=%s embedding=%d", self.info.name, self.info.version,
                    self.index, self.info.embedding_size)

    def stop(self) -> None:
        """Ask a batch stuck in retries to give up (called from another thread at shutdown)."""
        self._stopping = True

    def close(self) -> None:
        """Flush what is in flight and close the clients."""
        self.deliveries.wait(timeout=30)
        self.es.close()

    # --- one micro-batch -------------------------------------------------------------
    def process_batch(self, batch: Sequence[InMessage]) -> BatchReport:
        """Both stages of one micro-batch; returns after its documents are indexed and messages delivered."""
        return self.write(self.compute(batch))

    def compute(self, batch: Sequence[InMessage]) -> Computed:
        """Stage 1, CPU only: decode, one model call, build documents, predictions and dead letters."""
        computed = Computed(size=len(batch))
        t0 = time.perf_counter()
        decoded = self._decode(batch, computed)
        t1 = time.perf_counter()
        results = self._predict(decoded, computed)
        t2 = time.perf_counter()
        self._outputs(decoded, results, computed, processed=time.time(), timings=(t1 - t0, t2 - t1))
        computed.seconds.update(decode=t1 - t0, model=t2 - t1)
        return computed

    def write(self, computed: Computed) -> BatchReport:
        """Stage 2, I/O only: neighbour lookup, bulk index, alerts, then predictions, alerts and dead letters
        published; returns once all are acknowledged."""
        t0 = time.perf_counter()
        alerts = self.neighbours.alerts(computed.docs) if self.neighbours else []
        for rejected in bulk_index(self.es, self.index, computed.docs, should_stop=lambda: self._stopping):
            computed.dead.append((computed.messages[rejected.doc_id], "index_rejected",
                                  f"Elasticsearch rejected the document ({rejected.status}): {rejected.reason}", "index"))
            computed.predictions.pop(rejected.doc_id, None)
        alerts = [a for a in alerts if a.subject_id in computed.predictions]  # none for a document that was refused
        if alerts:
            for rejected in bulk_index(self.es, self.settings.alias("alerts"), [(a.alert_id, a.as_json()) for a in alerts],
                                       should_stop=lambda: self._stopping):
                logger.error("alert %s refused by Elasticsearch: %s", rejected.doc_id, rejected.reason)
        t1 = time.perf_counter()
        report = BatchReport(size=computed.size, indexed=len(computed.predictions), alerts=len(alerts))
        for _, code, _, _ in computed.dead:
            report.dead(code)
        if self.publish:
            self._publish(computed, alerts)
        t2 = time.perf_counter()
        report.seconds = {**computed.seconds, "index": t1 - t0, "publish": t2 - t1}
        self._record(report)
        return report

    def _publish(self, computed: Computed, alerts: list[Alert]) -> None:
        """Alerts, dead letters and predictions to Kafka; returns once all are acknowledged."""
        for alert in alerts:
            self.deliveries.produce(self.alerts_topic, to_json(alert.as_json()), alert.subject_id)
            metrics.ALERTS.labels(alert.rule).inc()
        for msg, code, reason, stage in computed.dead:
            key, value, headers = dead_letter(msg, code, reason, stage)
            self.deliveries.produce(self.dlq_topic, value, key, headers)
            metrics.DEAD_LETTERS.labels(code).inc()
        for image_id, value in computed.predictions.items():
            self.deliveries.produce(self.predictions_topic, value, image_id)
        self.deliveries.wait(what="predictions and dead letters")

    def _decode(self, batch: Sequence[InMessage], computed: Computed) -> list[_Decoded]:
        size, channels = self.info.input_size, self.info.channels
        out: list[_Decoded] = []
        seen: dict[str, int] = {}
        for msg in batch:
            image_id = message_id(msg)
            if image_id is None:
                computed.dead.append((msg, "missing_key", "the message has no usable key (image id): empty, blank or over 512 bytes", "decode"))
                continue
            try:
                pixels = decode_image(msg.value or b"", size, channels, self.limits)
            except DecodeError as exc:
                computed.dead.append((msg, exc.reason, str(exc), "decode"))
                continue
            if image_id in seen:  # the same id twice in one batch: the later message wins, as in the index
                out[seen[image_id]] = _Decoded(msg, image_id, pixels)
                continue
            seen[image_id] = len(out)
            out.append(_Decoded(msg, image_id, pixels))
        return out

    def _predict(self, decoded: list[_Decoded], computed: Computed) -> BatchResult | None:
        if not decoded:
            return None
        try:
            return self.handler.predict_batch(np.stack([d.pixels for d in decoded]))
        except Exception:  # noqa: BLE001 - isolate the image that breaks the model, keep the rest
            logger.exception("model failed on a batch of %d; retrying one by one", len(decoded))
            keep, rows = [], []
            for item in decoded:
                try:
                    rows.append(self.handler.predict_batch(item.pixels[None]))
                    keep.append(item)
                except Exception as one:  # noqa: BLE001
                    computed.dead.append((item.msg, "model_error", f"the model failed on this image: {type(one).__name__}: {one}", "model"))
            decoded[:] = keep
            if not rows:
                return None
            return BatchResult(np.concatenate([r.embeddings for r in rows]), np.concatenate([r.probabilities for r in rows]))

    def _outputs(self, decoded: list[_Decoded], results: BatchResult | None, computed: Computed, processed: float,
                 timings: tuple[float, float]) -> None:
        if results is None:
            return
        info = self.info
        top = results.top_k(info.labels, self.settings.top_k)
        per_image_ms = {"decode": 1000 * timings[0] / len(decoded), "model": 1000 * timings[1] / len(decoded)}
        docs, predictions = computed.docs, computed.predictions
        for i, item in enumerate(decoded):
            computed.messages[item.image_id] = item.msg
            msg = item.msg
            label, score = top[i][0] if top[i] else (None, None)
            event_time = iso(msg.timestamp_ms / 1000) if msg.timestamp_ms else None
            common = {
                "image_id": item.image_id, "label": label, "score": score, "true_label": msg.header("label"),
                "model_name": info.name, "model_version": info.version, "kafka": msg.coordinates,
                "event_time": event_time, "processed_time": iso(processed),
            }
            docs.append((item.image_id, {
                **common,
                "embedding": results.embeddings[i].tolist(),
                "top_k": [{"label": lab, "probability": p} for lab, p in top[i]],
                "source": msg.header("source"), "content_type": msg.header("content-type"),
                "thumbnail": base64.b64encode(thumbnail_jpeg(item.pixels)).decode(),
            }))
            predictions[item.image_id] = to_json({
                **common, "top_k": [{"label": lab, "probability": round(p, 6)} for lab, p in top[i]],
                "timings_ms": {k: round(v, 3) for k, v in per_image_ms.items()},
            })

    def _record(self, report: BatchReport) -> None:
        metrics.IMAGES_PROCESSED.inc(report.indexed)
        metrics.BATCH_SIZE.observe(report.size)
        for stage, seconds in report.seconds.items():
            metrics.STAGE_SECONDS.labels(stage).observe(seconds)
        logger.info("batch size=%d indexed=%d alerts=%d dead=%d decode=%.3fs model=%.3fs index=%.3fs publish=%.3fs",
                    report.size, report.indexed, report.alerts, sum(report.dead_letters.values()), report.seconds["decode"],
                    report.seconds["model"], report.seconds["index"], report.seconds["publish"])
