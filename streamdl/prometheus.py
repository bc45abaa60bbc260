"""The Prometheus registry every component adds its metrics to, and the HTTP endpoint that serves it."""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Info, start_http_server

from streamdl import __version__
from streamdl.errors import SettingsError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from streamdl.settings import Settings

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
"""Add metrics with ``registry=REGISTRY``; each long-running command serves it on its own port."""

BUILD_INFO = Info("streamdl_build", "Version of the streamdl package", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})

PORT_SETTINGS = {"worker": "metrics_port", "archive": "archive_metrics_port"}
"""The setting that holds the metrics port of each command that serves metrics (``streamdl archive run``:
``archive``). Separate defaults (9464, 9465), so a worker and an archiver run side by side."""


def metrics_port(settings: Settings, command: str = "worker") -> int:
    """The port ``streamdl COMMAND`` serves its metrics on (0: none)."""
    return getattr(settings, PORT_SETTINGS.get(command, "metrics_port"))


def check_metrics_port(settings: Settings, setting: str = "metrics_port") -> None:
    """Fail fast, before a slow start: :class:`SettingsError` when the port of ``setting`` cannot be bound on
    ``metrics_host`` now (taken, or a bad address). :func:`serve_metrics` binds it for real later."""
    port, host = getattr(settings, setting), settings.metrics_host
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server does
            probe.bind((host, port))
    except OSError as exc:
        raise _bind_error(exc, host, port, setting) from None


def serve_metrics(settings: Settings, setting: str = "metrics_port") -> WSGIServer | None:
    """Serve :data:`REGISTRY` at ``http://<metrics_host>:<port>/metrics`` in a daemon thread, the port
    being the value of ``setting`` (0: off, returns ``None``).

    A port already taken (another worker or archiver on this host, or any other program) or an address
    that cannot be bound is a one-line :class:`SettingsError` naming the setting and its environment variable."""
    port, host = getattr(settings, setting), settings.metrics_host
    if port == 0:
        logger.info("metrics endpoint off (%s=0)", setting)
        return None
    try:
        server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise _bind_error(exc, host, port, setting) from None
    logger.info("metrics endpoint http://%s:%d/metrics (%s)", host, port, setting)
    return server


def _bind_error(exc: OSError, host: str, port: int, setting: str) -> SettingsError:
    env = f"STREAMDL_{setting.upper()}"
    if exc.errno == errno.EADDRINUSE:
        return SettingsError(
            f"metrics port {port} on {host} is already in use (another streamdl worker or archiver on this host, "
            f"or another program); set {setting} ({env}) to a free port, or 0 for no metrics endpoint"
        )
    return SettingsError(
        f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
        f"check metrics_host (STREAMDL_METRICS_HOST) and {setting} ({env})"
    )
