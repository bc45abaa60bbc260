"""The Beam part of retraining: archived images joined with their latest label, split, embedded.

    archive files (images) ─► rows (image id, bytes, time) ─┐
                                                            ├─ CoGroupByKey ─► latest image + latest label
    archive files (events) ─► label events (image id, label)┘          │
                                          split by a hash of the id ◄──┘
                                          decode ─► RunInference (the served model: embedding + probabilities)
                                          ─► Parquet rows (id, split, label, embedding, probabilities)

Runs on any Beam runner: Beam's in-process local runner by default (:data:`LOCAL_RUNNER`),
Flink/Spark/Dataflow through the standard pipeline options (``--runner=...``). Files are read one
per element, so a corrupt or truncated file is skipped and counted (``corrupt_files``), never a
failed run. Only this subpackage imports Beam.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from streamdl.models.decode import DecodeError, DecodeLimits, decode_image
from streamdl.times import to_epoch

logger = logging.getLogger(__name__)

NAMESPACE = "streamdl.retrain"
SPLITS = (("train", 70), ("validation", 85), ("test", 100))
"""Cumulative percentages of the id hash: 70% train, 15% validation, 15% test."""
LOCAL_RUNNER = ("--runner=FnApiRunner", "--direct_running_mode=in_memory")
"""The runner when the user names none: the DirectRunner's in-process batch engine, in this process.

Not ``--runner=DirectRunner``: since Beam 2.6x that name first tries the PrismRunner, which downloads
a Go binary from GitHub at run time (and falls back when it cannot). Nothing may download at run time."""


def split_of(image_id: str) -> str:
    """``train``, ``validation`` or ``test``: deterministic in the id, stable as data grows."""
    bucket = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") % 100
    return next(name for name, upper in SPLITS if bucket < upper)


@dataclass(frozen=True)
class ServedModel:
    """How to load the model that embeds (and, for comparison, classifies) on each worker."""

    name: str
    state_dir: str
    head: str | None
    batch_size: int
    input_size: tuple[int, int]
    channels: int
    max_bytes: int
    max_pixels: int


class ServedModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """RunInference over the product's own model handler: one ``predict_batch`` per Beam batch."""

    def __init__(self, model: ServedModel) -> None:
        super().__init__()
        self.model = model

    def load_model(self):
        from streamdl.models.catalog import load_handler

        handler = load_handler(
            self.model.name,
            state_dir=Path(self.model.state_dir),
            batch_size=self.model.batch_size,
            head=self.model.head,
        )
        handler.load()
        return handler

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[PredictionResult]:
        result = model.predict_batch(np.stack(batch))
        return [PredictionResult(x, (result.embeddings[i], result.probabilities[i])) for i, x in enumerate(batch)]

    def batch_elements_kwargs(self) -> dict[str, int]:
        return {"min_batch_size": 1, "max_batch_size": self.model.batch_size}

    def share_model_across_processes(self) -> bool:
        return False


def read_rows(element: tuple[str, Any], columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The rows of one archive file ``(root, ArchiveFile)``; a file that cannot be read is counted and skipped."""
    from streamdl.connectors.archive import filesystem
    from streamdl.connectors.archive_reader import CorruptFile, read_file

    root, archived = element
    fs, _ = filesystem(root)
    try:
        table = read_file(fs, archived, columns=list(columns))
    except (CorruptFile, FileNotFoundError) as exc:
        logger.warning("skipping archive file %s: %s", archived.path, exc)
        Metrics.counter(NAMESPACE, "corrupt_files").inc()
        return
    Metrics.counter(NAMESPACE, "files").inc()
    yield from table.to_pylist()


def image_rows(element: tuple[str, Any]) -> Iterator[tuple[str, tuple[int, bytes]]]:
    for row in read_rows(element, ["key", "value", "timestamp_ms", "partition", "offset"]):
        if not row["key"] or not row["value"]:
            Metrics.counter(NAMESPACE, "images_without_key_or_bytes").inc()
            continue
        Metrics.counter(NAMESPACE, "archived_images").inc()
        yield row["key"].decode("utf-8", "replace"), (row["timestamp_ms"] or 0, row["value"])


def label_rows(element: tuple[str, Any]) -> Iterator[tuple[str, tuple[float, str]]]:
    """The ``label`` events of an events file as ``(image id, (time, label))``."""
    for row in read_rows(element, ["value", "timestamp_ms"]):
        label = parse_label_event(row["value"], (row["timestamp_ms"] or 0) / 1000)
        if label is not None:
            Metrics.counter(NAMESPACE, "label_events").inc()
            yield label


def parse_label_event(value: bytes | None, fallback_ts: float) -> tuple[str, tuple[float, str]] | None:
    """``(image id, (time, label))`` of a ``label`` event, ``None`` for any other message."""
    try:
        event = json.loads(value or b"")
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or event.get("type") != "label":
        return None
    image_id, label = event.get("image_id"), event.get("label")
    if not isinstance(image_id, str) or not isinstance(label, str) or not image_id or not label:
        return None
    return image_id, (_event_time(event.get("ts"), fallback_ts), label)


def _event_time(ts: Any, fallback: float) -> float:
    try:
        return to_epoch(ts)
    except (ValueError, OverflowError):
        return fallback


def join_latest(element: tuple[str, dict[str, list]]) -> Iterator[tuple[str, str, bytes]]:
    """The latest archived image of an id with its latest label; counts ids that have only one of the two."""
    image_id, grouped = element
    images, labels = grouped["images"], grouped["labels"]
    if not labels:
        Metrics.counter(NAMESPACE, "unlabelled_images").inc()
        return
    if not images:
        Metrics.counter(NAMESPACE, "labels_for_unknown_images").inc()
        return
    _, data = max(images, key=lambda item: item[0])
    _, label = max(labels, key=lambda item: item[0])
    Metrics.counter(NAMESPACE, "labelled_images").inc()
    yield image_id, label, data


class Decode(beam.DoFn):
    """Bytes to the model's input; an image that does not decode is counted and dropped."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model

    def process(self, element: tuple[str, str, bytes]):
        image_id, label, data = element
        try:
            pixels = decode_image(
                data,
                self.model.input_size,
                self.model.channels,
                DecodeLimits(max_bytes=self.model.max_bytes, max_pixels=self.model.max_pixels),
            )
        except DecodeError:
            Metrics.counter(NAMESPACE, "undecodable_images").inc()
            return
        yield (image_id, split_of(image_id), label), pixels


def to_output_row(element: tuple[tuple[str, str, str], PredictionResult]) -> dict[str, Any]:
    (image_id, split, label), result = element
    embedding, probabilities = result.inference
    return {
        "image_id": image_id,
        "split": split,
        "label": label,
        "embedding": np.asarray(embedding, np.float32).tolist(),
        "probabilities": np.asarray(probabilities, np.float32).tolist(),
    }


def output_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("image_id", pa.string()),
            ("split", pa.string()),
            ("label", pa.string()),
            ("embedding", pa.list_(pa.float32())),
            ("probabilities", pa.list_(pa.float32())),
        ]
    )


def build(
    p: beam.Pipeline,
    image_files: list[tuple[str, Any]],
    event_files: list[tuple[str, Any]],
    model: ServedModel,
    out_prefix: str,
) -> None:
    """Add the read → join → split → embed → write steps to ``p``."""
    images = p | "ImageFiles" >> beam.Create(image_files or []) | "ReadImages" >> beam.FlatMap(image_rows)
    labels = p | "EventFiles" >> beam.Create(event_files or []) | "ReadLabels" >> beam.FlatMap(label_rows)
    (
        {"images": images, "labels": labels}
        | "Join" >> beam.CoGroupByKey()
        | "LatestLabel" >> beam.FlatMap(join_latest)
        | "Decode" >> beam.ParDo(Decode(model))
        | "Embed" >> RunInference(KeyedModelHandler(ServedModelHandler(model)))
        | "ToRows" >> beam.Map(to_output_row)
        | "Write" >> beam.io.WriteToParquet(out_prefix, output_schema(), file_name_suffix=".parquet")
    )


def pipeline_options(beam_args: Sequence[str] = ()) -> PipelineOptions:
    """The user's Beam options; :data:`LOCAL_RUNNER` first unless they name a ``--runner`` (their
    later ``--direct_*`` options win over its defaults)."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args = [*LOCAL_RUNNER, *args]
    return PipelineOptions(args)


def run(
    image_files: list[tuple[str, Any]],
    event_files: list[tuple[str, Any]],
    model: ServedModel,
    out_prefix: str,
    beam_args: Sequence[str] = (),
) -> dict[str, int]:
    """Run the pipeline (in-process, :data:`LOCAL_RUNNER`, unless ``beam_args`` name a runner) over
    ``(archive root, ArchiveFile)`` elements; returns its counters."""
    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        build(p, image_files, event_files, model, out_prefix)
    result = p.result
    counters: dict[str, int] = {}
    for c in result.metrics().query()["counters"]:  # one per step: "files" is counted by two readers
        if c.key.metric.namespace == NAMESPACE:
            value = int(c.committed if c.committed is not None else c.attempted)
            counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + value
    return counters
