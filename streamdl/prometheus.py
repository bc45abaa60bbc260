"""The Prometheus registry every component adds its metrics to, and the HTTP endpoint that serves it."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Info, start_http_server

from streamdl import __version__

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
"""Add metrics with ``registry=REGISTRY``; the worker serves this registry on ``metrics_port``."""

BUILD_INFO = Info("streamdl_build", "Version of the streamdl package", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Serve :data:`REGISTRY` at ``http://host:port/metrics`` in a daemon thread (port 0: off)."""
    if port == 0:
        logger.info("metrics endpoint off (metrics_port=0)")
        return
    start_http_server(port, addr=host, registry=REGISTRY)
    logger.info("metrics endpoint http://%s:%d/metrics", host, port)
