"""Publish images to Kafka: files and folders, or the digits sample that scikit-learn ships.

Each message: value = the image's raw bytes, key = a stable image id (a content hash unless the
caller gives one), headers ``content-type``, ``source`` and, when known, ``label``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streamdl.connectors.kafka_producer import Headers, ProduceReport, Skipped, publish_items
from streamdl.models.decode import sniff_content_type
from streamdl.records import content_id
from streamdl.settings import Settings

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ImageItem:
    """One image to publish."""

    data: bytes
    source: str
    image_id: str | None = None
    label: str | None = None
    content_type: str | None = None

    def message(self) -> tuple[str, bytes, Headers]:
        """Key, value and headers of the Kafka message."""
        headers: Headers = [
            (
                "content-type",
                (self.content_type or sniff_content_type(self.data) or "application/octet-stream").encode(),
            ),
            ("source", self.source.encode()),
        ]
        if self.label is not None:
            headers.append(("label", self.label.encode()))
        return self.image_id or content_id(self.data), self.data, headers


def iter_files(paths: Iterable[str | os.PathLike], max_bytes: int) -> Iterator[ImageItem | Skipped]:
    """Every image file under ``paths`` (files, or folders walked recursively in name order)."""
    for root in map(Path, paths):
        if not root.exists():
            yield Skipped(str(root), "no such file or folder")
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if root.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                size = path.stat().st_size
                if size > max_bytes:
                    yield Skipped(str(path), f"{size} bytes is over the {max_bytes}-byte message limit")
                    continue
                data = path.read_bytes()
            except OSError as exc:
                yield Skipped(str(path), f"unreadable: {exc.strerror or exc}")
                continue
            content_type = sniff_content_type(data)
            if content_type is None:
                yield Skipped(str(path), "not an image (unknown file signature)")
                continue
            yield ImageItem(data, source=str(path), content_type=content_type)


def iter_digits(limit: int | None = None) -> Iterator[ImageItem]:
    """The 1,797 handwritten digits of scikit-learn as 32x32 PNGs, labels in headers."""
    from sklearn.datasets import load_digits

    from streamdl.models.digits import digit_id, digit_to_png

    digits = load_digits()
    count = len(digits.target) if limit is None else min(limit, len(digits.target))
    for i in range(count):
        data = digit_to_png(digits.data[i])
        yield ImageItem(
            data,
            source=f"sample:digits/{i}",
            label=str(int(digits.target[i])),
            content_type="image/png",
            image_id=digit_id(i),
        )


def publish(
    settings: Settings,
    items: Iterable[ImageItem | Skipped],
    *,
    rate: float | None = None,
    total: int | None = None,
    progress: bool = True,
    topic: str | None = None,
) -> ProduceReport:
    """Publish ``items`` to the images topic (see :func:`~streamdl.connectors.kafka_producer.publish_items`)."""
    return publish_items(
        settings,
        items,
        topic=topic or settings.topic("images"),
        unit="images",
        rate=rate,
        total=total,
        progress=progress,
    )
