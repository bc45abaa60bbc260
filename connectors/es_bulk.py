"""Bulk indexing with deterministic ids: retry only what failed for a transient reason, with capped
backoff, and hand back the documents Elasticsearch rejected for good."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from elasticsearch import ApiError, Elasticsearch, TransportError

logger = logging.getLogger(__name__)

RETRY_STATUSES = {429, 502, 503, 504}


@dataclass(frozen=True)
class Rejected:
    """A document Elasticsearch refused for a reason retrying will not fix."""

    doc_id: str
    status: int
    reason: str


def bulk_index(
    client: Elasticsearch,
    index: str,
    docs: list[tuple[str, dict[str, Any]]],
    *,
    max_backoff: float = 30.0,
    give_up_after: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Rejected]:
    """Index ``(id, document)`` pairs into ``index``; returns the permanently rejected ones.

    Connection errors, timeouts and item statuses 429/502/503/504 are retried with exponential
    backoff capped at ``max_backoff`` seconds, for as long as it takes unless ``give_up_after``
    seconds pass (then :class:`TransportError` propagates) or ``should_stop()`` turns true.
    Because ids are deterministic, a retried document overwrites itself: no duplicates.
    """
    pending = list(docs)
    rejected: list[Rejected] = []
    delay, start, attempt = 0.2, time.monotonic(), 0
    while pending:
        attempt += 1
        operations: list[dict[str, Any]] = []
        for doc_id, doc in pending:
            operations += [{"index": {"_index": index, "_id": doc_id}}, doc]
        retry: list[tuple[str, dict[str, Any]]] = []
        try:
            resp = client.bulk(operations=operations, refresh=False)
        except TransportError as exc:  # connection refused or reset, timeouts
            retry, why = pending, f"{type(exc).__name__}: {exc}"
        except ApiError as exc:
            if exc.status_code not in RETRY_STATUSES:
                raise
            retry, why = pending, f"HTTP {exc.status_code}"
        else:
            why = ""
            for (doc_id, doc), item in zip(pending, resp["items"]):
                result = item["index"]
                status = result.get("status", 500)
                if status < 300:
                    continue
                if status in RETRY_STATUSES:
                    retry.append((doc_id, doc))
                    why = f"item status {status}"
                else:
                    err = result.get("error", {})
                    rejected.append(
                        Rejected(doc_id, status, f"{err.get('type', 'error')}: {err.get('reason', '')}"[:500])
                    )
        if not retry:
            break
        if should_stop() or (give_up_after is not None and time.monotonic() - start > give_up_after):
            raise TransportError(f"Elasticsearch bulk gave up after {attempt} attempts: {why}")
        logger.warning("bulk retry attempt=%d docs=%d reason=%s backoff=%.1fs", attempt, len(retry), why, delay)
        resume = time.monotonic() + delay
        while time.monotonic() < resume and not should_stop():  # a shutdown does not wait out the backoff
            time.sleep(min(0.2, max(0.0, resume - time.monotonic())))
        if should_stop():
            raise TransportError(f"Elasticsearch bulk stopped by shutdown after {attempt} attempts: {why}")
        delay = min(delay * 2, max_backoff)
        pending = retry
    return rejected
