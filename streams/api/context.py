"""The settings the API runs with: the caller's, else the workers' (``STREAMDL_*``, ``.env``)."""

from __future__ import annotations

from streamdl.models.decode import DecodeLimits
from streamdl.settings import Settings, load_settings


def resolve(settings: Settings | None) -> Settings:
    """``settings``, or the ones a worker started here would load."""
    return settings if settings is not None else load_settings()


def decode_limits(settings: Settings) -> DecodeLimits:
    """The decoder limits the workers apply (``STREAMDL_MAX_MESSAGE_BYTES``, ``STREAMDL_MAX_PIXELS``)."""
    return DecodeLimits(max_bytes=settings.max_message_bytes, max_pixels=settings.max_pixels)
