"""Bulk indexing with deterministic ids: retry only what failed for a transient reason, with capped
backoff, and hand back the documents Elasticsearch rejected for good."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from elasticsearch import ApiError, Elasticsearch, TransportError

logger = logging.getLogger(__name__)

RETRY_STATUSES = {429, 502, 503, 504}


@dataclass(frozen=True)
class Rejected:
    """A document Elasticsearch refused for a reason retrying will not fix."""

    doc_id: str
    status: int
    reason: str


RESPONSE_FILTER = ["errors", "items.*.status", "items.*.error.type", "items.*.error.reason"]
"""Only what the retry loop reads: item order, status and error (a 256-image response shrinks ~20x)."""


def encode(index: str, doc_id: str, doc: Mapping[str, Any]) -> bytes:
    """One bulk ``index`` action as NDJSON lines, serialized once (numpy arrays as lists)."""
    action = orjson.dumps({"index": {"_index": index, "_id": doc_id}})
    return action + b"\n" + orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def bulk_index(
    client: Elasticsearch,
    index: str,
    docs: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    max_backoff: float = 30.0,
    give_up_after: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Rejected]:
    """Index ``(id, document)`` pairs into ``index``; returns the permanently rejected ones.

    Each document is serialized once into a pre-encoded NDJSON body; a retry re-sends only the
    lines of the documents that failed. Connection errors, timeouts and item statuses
    429/502/503/504 are retried with exponential backoff capped at ``max_backoff`` seconds, for as
    long as it takes unless ``give_up_after`` seconds pass (then :class:`TransportError`
    propagates) or ``should_stop()`` turns true. Because ids are deterministic, a retried document
    overwrites itself: no duplicates.
    """
    pending = [(doc_id, encode(index, doc_id, doc)) for doc_id, doc in docs]
    rejected: list[Rejected] = []
    delay, start, attempt = 0.2, time.monotonic(), 0
    while pending:
        attempt += 1
        retry: list[tuple[str, bytes]] = []
        try:
            resp = client.bulk(operations=b"".join(lines for _, lines in pending), filter_path=RESPONSE_FILTER)
        except TransportError as exc:  # connection refused or reset, timeouts
            retry, why = pending, f"{type(exc).__name__}: {exc}"
        except ApiError as exc:
            if exc.status_code not in RETRY_STATUSES:
                raise
            retry, why = pending, f"HTTP {exc.status_code}"
        else:
            why = ""
            if resp.get("errors"):
                for (doc_id, lines), item in zip(pending, resp["items"]):
                    result = item["index"]
                    status = result.get("status", 500)
                    if status < 300:
                        continue
                    if status in RETRY_STATUSES:
                        retry.append((doc_id, lines))
                        why = f"item status {status}"
                    else:
                        err = result.get("error", {})
                        reason = f"{err.get('type', 'error')}: {err.get('reason', '')}"[:500]
                        rejected.append(Rejected(doc_id, status, reason))
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
