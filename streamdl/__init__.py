"""streamdl: real-time deep learning over Kafka.

The core (settings, errors, records, metrics registry) lives here; the Python API
(:mod:`streamdl.streams.api`: ``read_images``, ``ImageFeaturizer``, ``fit_head``, ``similar``, ...) is
reachable as ``streamdl.<name>`` and imported on first use, so ``import streamdl`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

API_NAMES = (
    # the public names of streamdl.streams.api, imported from it on first use
    "Head",
    "ImageFeaturizer",
    "ImagePredictor",
    "IndexFolderReport",
    "contact_sheet",
    "fit_head",
    "index_folder",
    "publish_events",
    "publish_images",
    "read_archive",
    "read_images",
    "read_topic",
    "similar",
)

__all__ = ["__version__", *API_NAMES]


def __getattr__(name: str) -> Any:
    if name in API_NAMES:
        from streamdl.streams import api

        return getattr(api, name)
    raise AttributeError(f"module 'streamdl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API_NAMES])
