"""Bulk indexing with deterministic ids: retry only what failed for a transient reason, with capped
backoff, and hand back the documents Elasticsearch rejected for good.

A write block is transient: an index turned read-only at the disk's flood-stage watermark
(``index.blocks.read_only_allow_delete``, item status 429) or blocked by an operator
(``cluster_block_exception``, 403) is waited out like an outage, never rejected."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from elasticsearch import ApiError, Elasticsearch, TransportError

from streamdl.records import to_json
from streamdl.retry import Backoff, sleep

logger = logging.getLogger(__name__)

RETRY_STATUSES = {429, 502, 503, 504}
BLOCKED = "cluster_block_exception"
"""The error type of a write refused by an index or cluster block (read-only, flood stage): wait, not reject."""


@dataclass(frozen=True)
class Rejected:
    """A document Elasticsearch refused for a reason retrying will not fix."""

    doc_id: str
    status: int
    reason: str
    index: str = ""
    """The index (or alias) the action named."""


@dataclass(frozen=True)
class BulkItem:
    """One pre-encoded bulk action (:func:`encode`) and the index and id it writes."""

    index: str
    doc_id: str
    lines: bytes


RESPONSE_FILTER = ["errors", "items.*.status", "items.*.error.type", "items.*.error.reason"]
"""Only what the retry loop reads: item order, status and error (a 256-image response shrinks ~20x)."""


def encode(
    index: str, doc_id: str, doc: Mapping[str, Any] | bytes | None, op: str = "index", version: int | None = None
) -> bytes:
    """One bulk action (``index``, ``create`` or ``delete``, which has no document) as NDJSON lines, serialized
    once (numpy arrays as lists; ``bytes`` are the document's JSON already); with ``version``, an ``index`` that
    only replaces a document of a lower version (external versioning)."""
    meta: dict[str, Any] = {"_index": index, "_id": doc_id}
    if version is not None:
        meta.update(version=version, version_type="external")
    action = orjson.dumps({op: meta}) + b"\n"
    if doc is None:
        return action
    return action + (doc if isinstance(doc, bytes) else to_json(doc)) + b"\n"


def item(
    index: str, doc_id: str, doc: Mapping[str, Any] | bytes | None, op: str = "index", version: int | None = None
) -> BulkItem:
    """One action (:func:`encode`) ready for :func:`send_bulk`."""
    return BulkItem(index, doc_id, encode(index, doc_id, doc, op, version))


def bulk_index(
    client: Elasticsearch,
    index: str,
    docs: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    op: str = "index",
    versions: Mapping[str, int] | None = None,
    **retries: Any,
) -> list[Rejected]:
    """Index ``(id, document)`` pairs into ``index``; returns the permanently rejected ones (:func:`send_bulk`,
    whose keyword arguments ``retries`` are). ``op="create"`` writes only what is not there yet; ``versions`` (by
    id) replace a document only when their version is higher than the stored one. Either way a conflict comes
    back as a :class:`Rejected` of status 409."""
    versions = versions or {}
    return send_bulk(client, [item(index, doc_id, doc, op, versions.get(doc_id)) for doc_id, doc in docs], **retries)


def send_bulk(
    client: Elasticsearch,
    items: Sequence[BulkItem],
    *,
    max_backoff: float = 30.0,
    give_up_after: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_blocked: Callable[[str], None] = lambda why: None,
) -> list[Rejected]:
    """Send pre-encoded actions (any indices, in one request while nothing fails); returns the permanently
    rejected ones.

    A retry re-sends only the actions that failed. Connection errors, timeouts, item statuses
    429/502/503/504 and write blocks (``cluster_block_exception``) are retried with exponential
    backoff capped at ``max_backoff`` seconds, for as long as it takes unless ``give_up_after``
    seconds pass (then :class:`TransportError` propagates) or ``should_stop()`` turns true;
    ``on_blocked(reason)`` is called at each attempt refused by a block. Because ids are
    deterministic, a retried document overwrites itself: no duplicates.
    """
    pending = list(items)
    rejected: list[Rejected] = []
    backoff, start, attempt = Backoff(first=0.2, max_delay=max_backoff), time.monotonic(), 0
    while pending:
        attempt += 1
        retry: list[BulkItem] = []
        blocked_by = ""
        try:
            resp = client.bulk(operations=b"".join(i.lines for i in pending), filter_path=RESPONSE_FILTER)
        except TransportError as exc:  # connection refused or reset, timeouts
            retry, why = pending, f"{type(exc).__name__}: {exc}"
        except ApiError as exc:
            blocked = _error_type(exc.body) == BLOCKED
            if exc.status_code not in RETRY_STATUSES and not blocked:
                raise
            retry, why = pending, f"HTTP {exc.status_code}" + (f" {BLOCKED}" if blocked else "")
            blocked_by = str(exc) if blocked else ""
        else:
            why = ""
            if resp.get("errors"):
                for sent, answer in zip(pending, resp["items"]):
                    result = next(iter(answer.values()))
                    status = result.get("status", 500)
                    if status < 300:
                        continue
                    err = result.get("error", {})
                    reason = f"{err.get('type', 'error')}: {err.get('reason', '')}"[:500]
                    if status in RETRY_STATUSES or err.get("type") == BLOCKED:
                        retry.append(sent)
                        why = f"item status {status} {err.get('type', '')}".rstrip()
                        blocked_by = reason if err.get("type") == BLOCKED else blocked_by
                    else:
                        rejected.append(Rejected(sent.doc_id, status, reason, sent.index))
        if blocked_by:
            on_blocked(blocked_by)
        if not retry:
            break
        if should_stop() or (give_up_after is not None and time.monotonic() - start > give_up_after):
            raise TransportError(f"Elasticsearch bulk gave up after {attempt} attempts: {why}")
        delay = backoff.delay(attempt)
        logger.warning("bulk retry attempt=%d docs=%d reason=%s backoff=%.1fs", attempt, len(retry), why, delay)
        if sleep(delay, should_stop):  # a shutdown does not wait out the backoff
            raise TransportError(f"Elasticsearch bulk stopped by shutdown after {attempt} attempts: {why}")
        pending = retry
    return rejected


def _error_type(body: Any) -> str:
    """``error.type`` of an Elasticsearch error body, or ``""``."""
    error = body.get("error") if isinstance(body, Mapping) else None
    return str(error.get("type", "")) if isinstance(error, Mapping) else ""
