"""Errors of the model layer."""

from __future__ import annotations

from streamdl.errors import StreamdlError


class ModelNotFound(StreamdlError):
    """A model, or a file it needs, is not where it was looked for; the message says where to put what."""


class RoleRefused(StreamdlError):
    """A version cannot run as the shadow or the canary (the champion, an event model, a bad fraction)."""
