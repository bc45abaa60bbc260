"""The Prometheus metrics of ``streamdl serve`` (on :data:`streamdl.prometheus.REGISTRY`, served at its own
``/metrics``): requests and their latency per route. The route label is the app's route pattern (``/api/similar``),
``unmatched`` for any other path, so its values are bounded by the routes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from streamdl.prometheus import REGISTRY

REQUESTS = Counter(
    "streamdl_web_requests",
    "Requests answered by the web page, by route, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "streamdl_web_request_seconds",
    "Seconds to answer a request of the web page, by route",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)


def route_of(request: web.Request) -> str:
    """The route pattern the request matched, ``unmatched`` for none (a 404)."""
    info = request.match_info
    if isinstance(info, web.UrlMappingMatchInfo) and not info.http_exception and info.route.resource is not None:
        return info.route.resource.canonical
    return "unmatched"


@web.middleware
async def measure(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Count and time every answer (the outermost middleware: errors and 401s are counted too)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_of(request)
        REQUESTS.labels(route, request.method if request.method in KNOWN_METHODS else "other", str(status)).inc()
        LATENCY.labels(route).observe(time.perf_counter() - started)


KNOWN_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"})
"""Methods counted by name; any other is ``other`` (a client cannot grow the label values)."""


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the registry in the Prometheus text format."""
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
