"""The webhook sink: POST one alert's JSON to a URL, signed, with retries.

Each request carries the alert JSON exactly as it was on the alerts topic (nothing added), and:

* ``Content-Type: application/json``
* ``X-Streamdl-Alert-Id``: the alert's id, the receiver's idempotency key (delivery is
  at-least-once); percent-encoded where it holds ``%``, spaces or anything outside printable ASCII;
* ``X-Streamdl-Timestamp``: Unix time in seconds when this try was sent;
* ``X-Streamdl-Signature``: ``sha256=`` + hex HMAC-SHA256 over ``timestamp + "." + body`` with the
  shared secret (only when a secret is configured). Receivers check it with :func:`verify`.

Connection errors, timeouts, 5xx and 429 are retried with exponential backoff (``Retry-After`` is
honoured, capped); other 4xx and redirects are permanent failures. Redirects are never followed,
so a signed alert is never re-sent somewhere else. Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit

from streamdl.retry import Backoff

logger = logging.getLogger(__name__)

HEADER_ALERT_ID = "X-Streamdl-Alert-Id"
HEADER_TIMESTAMP = "X-Streamdl-Timestamp"
HEADER_SIGNATURE = "X-Streamdl-Signature"
MAX_DELAY_SECS = 60.0
"""Longest wait between two tries (exponential backoff and ``Retry-After`` alike)."""
_SAFE_ID_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def sign(secret: bytes | str, timestamp: str, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 of ``timestamp + "." + body`` keyed with ``secret``."""
    mac = hmac.new(_bytes(secret), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: bytes | str,
    timestamp: str | None,
    body: bytes,
    signature: str | None,
    *,
    now: float | None = None,
    tolerance_secs: float = 300,
) -> bool:
    """Whether ``signature`` signs ``body`` at ``timestamp`` with ``secret``, and the timestamp is
    within ``tolerance_secs`` of ``now`` (default: the current time), refusing replayed requests.
    Compares in constant time; never raises on garbage input."""
    if not timestamp or not signature:
        return False
    try:
        sent = int(timestamp)
        expected = sign(secret, timestamp, body)
    except (ValueError, UnicodeError):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_secs:
        return False
    return hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace"))


def header_alert_id(alert_id: str) -> str:
    """The alert id as sent in ``X-Streamdl-Alert-Id`` (percent-encoded outside printable ASCII)."""
    return quote(alert_id, safe=_SAFE_ID_CHARS)


def safe_url(url: str) -> str:
    """``scheme://host[:port]`` only: webhook URLs often hold a token in the path or query."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


@dataclass(frozen=True)
class Delivery:
    """What became of one alert: ``ok`` when the receiver answered 2xx."""

    ok: bool
    status: int | None
    """The last HTTP status received (``None``: no response, e.g. connection refused)."""
    attempts: int
    error: str | None
    interrupted: bool = False
    """Stopped (the sink's ``stop`` event) before the last try: neither delivered nor failed."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx status


class _Permanent(Exception):
    pass


class WebhookSink:
    """POSTs alerts to ``url``; see the module docstring for headers, retries and redirects."""

    def __init__(
        self,
        url: str,
        secret: bytes | str | None,
        *,
        attempts: int = 4,
        backoff_secs: float = 0.5,
        timeout_secs: float = 5.0,
        max_delay_secs: float = MAX_DELAY_SECS,
        stop: threading.Event | None = None,
        user_agent: str = "streamdl-webhook",
    ) -> None:
        parts = urlsplit(url or "")
        try:
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise ValueError(
                "webhook URL must be http(s)://host[:port]/path, "
                f"got scheme {parts.scheme!r} and host {parts.hostname!r}"
            )
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.url = url
        self.secret = _bytes(secret) if secret else None
        self.attempts, self.backoff_secs, self.timeout_secs = attempts, max(0.0, backoff_secs), timeout_secs
        self.max_delay_secs = max_delay_secs
        self.backoff = Backoff(first=self.backoff_secs, max_delay=max_delay_secs, attempts=attempts)
        self.stop = stop
        self.user_agent = user_agent
        self._opener = urllib.request.build_opener(_NoRedirects)

    @property
    def target(self) -> str:
        """The URL without path and query, safe to log."""
        return safe_url(self.url)

    def worst_case_secs(self) -> float:
        """Longest one :meth:`deliver` can take (every try timing out, every wait at its cap)."""
        return self.attempts * self.timeout_secs + (self.attempts - 1) * self.max_delay_secs

    def headers(self, body: bytes, alert_id: str, now: float | None = None) -> dict[str, str]:
        """The headers of one try."""
        timestamp = str(int(time.time() if now is None else now))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self.user_agent,
            HEADER_ALERT_ID: header_alert_id(alert_id),
            HEADER_TIMESTAMP: timestamp,
        }
        if self.secret:
            headers[HEADER_SIGNATURE] = sign(self.secret, timestamp, body)
        return headers

    def deliver(self, body: bytes, alert_id: str) -> Delivery:
        """POST ``body`` (the alert JSON) until it is accepted, refused for good, or tries run out."""
        status: int | None = None
        error: str | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                status = self._post(body, alert_id)
                return Delivery(True, status, attempt, None)
            except _Permanent as exc:
                status, error = exc.args
                logger.warning("webhook %s refused alert %s for good: %s", self.target, alert_id, error)
                return Delivery(False, status, attempt, error)
            except _Retryable as exc:
                status, error, retry_after = exc.status, exc.error, exc.retry_after
            if self.backoff.exhausted(attempt):
                break
            delay = self.backoff.delay(attempt) if retry_after is None else min(self.max_delay_secs, retry_after)
            logger.warning(
                "webhook %s try %d/%d for alert %s failed (%s); retrying in %.2fs",
                self.target,
                attempt,
                self.attempts,
                alert_id,
                error,
                delay,
            )
            if self._sleep(delay):
                return Delivery(False, status, attempt, error, interrupted=True)
        logger.warning("webhook %s gave up on alert %s after %d tries: %s", self.target, alert_id, self.attempts, error)
        return Delivery(False, status, self.attempts, error)

    def _sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds; ``True`` when the stop event was set meanwhile."""
        if self.stop is not None:
            return self.stop.wait(delay)
        time.sleep(delay)
        return False

    def _post(self, body: bytes, alert_id: str) -> int:
        request = urllib.request.Request(self.url, data=body, method="POST", headers=self.headers(body, alert_id))
        try:
            with self._opener.open(request, timeout=self.timeout_secs) as resp:
                resp.read(65536)
                return resp.status
        except urllib.error.HTTPError as exc:
            with exc:
                detail = _snippet(exc)
            code = exc.code
            text = f"HTTP {code} {exc.reason or ''}".rstrip() + (f": {detail}" if detail else "")
            if code == 429 or code >= 500:
                raise _Retryable(code, text, _retry_after(exc.headers.get("Retry-After"))) from None
            if 300 <= code < 400:
                where = exc.headers.get("Location")
                text = f"HTTP {code} redirect{f' to {safe_url(where)}' if where else ''} not followed"
            raise _Permanent(code, text) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            raise _Retryable(
                None, f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason), None
            ) from None
        except TimeoutError as exc:
            raise _Retryable(None, f"timed out after {self.timeout_secs:g}s ({exc})", None) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(None, f"{type(exc).__name__}: {exc}", None) from None


class _Retryable(Exception):
    def __init__(self, status: int | None, error: str, retry_after: float | None) -> None:
        super().__init__(error)
        self.status, self.error, self.retry_after = status, error, retry_after


def _snippet(exc: urllib.error.HTTPError, limit: int = 200) -> str:
    try:
        text = exc.read(limit).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the body is only a hint
        return ""
    return " ".join(text.split())[:limit]


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; ``None`` when absent or garbage."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
