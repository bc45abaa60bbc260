"""Batch mode: featurize a folder straight into the images index, with the documents the worker writes.

The work is :class:`~streamdl.streams.pipelines.images.ImagePipeline` with ``publish=False`` (what
``streamdl index reindex`` runs): the same decoder limits, model (the registry's champion when one was
promoted), document bodies and bulk writer as the stream. Each file becomes the message ``streamdl produce``
would send (key = the content hash, headers ``source`` and ``content-type``; its time is the file's
modification time), so a file indexed here and the same file streamed get one document. Resumable: ids
already in the index are skipped before any decoding. Batch ``N+1`` is computed while batch ``N`` is
written, as in the worker.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from streamdl.records import InMessage, content_id
from streamdl.settings import Settings
from streamdl.streams.api.context import resolve
from streamdl.streams.api.tables import image_paths
from streamdl.streams.pipelines.stage import BatchReport

logger = logging.getLogger(__name__)

MAX_LISTED = 20
FILE_TOPIC = "file"
"""The ``kafka.topic`` of a document indexed from a file (partition 0, offset = the file's rank in the run)."""


@dataclass
class IndexFolderReport:
    """What :func:`index_folder` did."""

    folder: str
    index: str
    model_name: str
    model_version: str
    files: int = 0
    indexed: int = 0
    already: int = 0
    """Files whose id was indexed before this run (skipped)."""
    refused: dict[str, int] = field(default_factory=dict)
    """Files not indexed, by reason code (``unreadable``, ``not_an_image``, ``truncated``, ...)."""
    examples: list[str] = field(default_factory=list)
    """The first refused files with their reason."""
    seconds: float = 0.0
    """From the first file read to the index refreshed."""
    setup_seconds: float = 0.0
    """Checking the services, loading the model and making the index, before the first file."""

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds else 0.0

    def refuse(self, source: str, code: str, reason: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1
        if len(self.examples) < MAX_LISTED:
            self.examples.append(f"{source}: {reason}")

    def summary(self) -> str:
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(self.refused.items())) or "none"
        lines = [
            f"indexed {self.indexed} of {self.files} files from {self.folder} into {self.index} with "
            f"{self.model_name} version {self.model_version} in {self.seconds:.1f}s (setup {self.setup_seconds:.1f}s) "
            f"({self.images_per_second:.0f} images/s); already indexed {self.already}; refused {refused}"
        ]
        return "\n".join([*lines, *(f"  refused {e}" for e in self.examples)])


def index_folder(
    path: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    model: str | None = None,
    progress: bool = True,
    settings: Settings | None = None,
) -> IndexFolderReport:
    """Index every image file under ``path`` (a folder, a glob or a list, as :func:`read_images` takes) into
    the images index of ``model`` (default: the settings' ``model_name``) in micro-batches of
    ``max_batch_size``; returns the report. Needs Kafka and Elasticsearch up (the pipeline's checks)."""
    from tqdm.auto import tqdm

    from streamdl.streams.agents.worker import make_handler
    from streamdl.streams.pipelines.images import ImagePipeline

    t_setup = time.monotonic()
    settings = resolve(settings)
    if model is not None:
        settings = settings.model_copy(update={"model_name": model})
    files = image_paths(path)
    pipeline = ImagePipeline(settings, make_handler(settings), publish=False)
    pipeline.setup()
    report = IndexFolderReport(str(path), pipeline.index, pipeline.info.name, pipeline.info.version, len(files))
    t0 = time.monotonic()
    report.setup_seconds = t0 - t_setup
    try:
        with (
            ThreadPoolExecutor(1, thread_name_prefix="index-folder-write") as writer,
            tqdm(total=len(files), unit="img", desc="index folder", disable=not progress) as bar,
        ):
            pending: Future[BatchReport] | None = None
            for start in range(0, len(files), settings.max_batch_size):
                chunk = files[start : start + settings.max_batch_size]
                batch = _new_messages(pipeline, chunk, start, report)
                computed = pipeline.compute(batch) if batch else None
                for dead in computed.dead if computed else ():
                    report.refuse(dead.message.header("source") or "?", dead.code, dead.reason)
                if pending is not None:
                    report.indexed += pending.result().indexed
                pending = writer.submit(pipeline.write, computed) if computed else None
                bar.update(len(chunk))
            if pending is not None:
                report.indexed += pending.result().indexed
        pipeline.es.indices.refresh(index=pipeline.index)
    finally:
        pipeline.close()
    report.seconds = time.monotonic() - t0
    logger.info("%s", report.summary().splitlines()[0])
    return report


def _new_messages(pipeline, chunk: list[Path], start: int, report: IndexFolderReport) -> list[InMessage]:
    """The messages of the files in ``chunk`` whose id is not indexed yet."""
    read = list(_read(chunk, start, report))
    if not read:
        return []
    ids = [m.key.decode() for m in read]
    found = pipeline.es.mget(index=pipeline.index, ids=ids, source=False)["docs"]
    indexed = {d["_id"] for d in found if d.get("found")}
    report.already += sum(1 for i in ids if i in indexed)
    return [m for m in read if m.key.decode() not in indexed]


def _read(chunk: list[Path], start: int, report: IndexFolderReport) -> Iterator[InMessage]:
    from streamdl.models.decode import sniff_content_type

    for offset, path in enumerate(chunk, start):
        try:
            data, mtime = path.read_bytes(), path.stat().st_mtime
        except OSError as exc:
            report.refuse(str(path), "unreadable", f"unreadable: {exc.strerror or exc}")
            continue
        headers = {"source": str(path).encode()}
        content_type = sniff_content_type(data)
        if content_type:
            headers["content-type"] = content_type.encode()
        yield InMessage(
            key=content_id(data).encode(),
            value=data,
            topic=FILE_TOPIC,
            partition=0,
            offset=offset,
            timestamp_ms=int(mtime * 1000),
            headers=headers,
        )
