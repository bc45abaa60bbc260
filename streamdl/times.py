"""Time as the product reads and writes it: one parser for ISO times and epoch seconds, one for
durations (``90``, ``30s``, ``5m``, ``2h``, ``7d``), one for "since" flags, one ISO writer (``Z``).

Every module that turns text into a time or a time into text goes through here.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

from streamdl.errors import StreamdlError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: a number of seconds, or a number with a unit s, m, h, d or w.

    Raises ``ValueError`` saying what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, 5m, 2h or 7d, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 30s, 5m, 2h or 7d, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 0 < seconds < float("inf"):
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def to_epoch(value: str | int | float | datetime) -> float:
    """Seconds since the epoch from an ISO-8601 time (``Z``/``z`` or an offset; naive means UTC, as in
    Elasticsearch), a ``datetime`` (naive = UTC) or a number of epoch seconds.

    Raises ``ValueError`` for text that is not an ISO time and for non-finite numbers.
    """
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected an ISO time or epoch seconds, got {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"epoch seconds must be finite, got {value!r}")
    return seconds


def iso(ts: float | None) -> str | None:
    """Seconds since the epoch as ISO-8601 UTC with milliseconds and ``Z`` (``None`` stays ``None``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_since(value: str, now: float | None = None, flag: str = "--since") -> float:
    """A "since"/"until" flag as epoch seconds: an ISO time (naive = UTC) or a duration meaning that long ago
    (``90s``, ``30m``, ``2h``, ``7d``, ``1w``; ``now-2h`` works too). Raises :class:`StreamdlError` naming ``flag``."""
    text = value.strip()
    try:
        ago = parse_duration(text[4:] if text.startswith("now-") else text)
    except ValueError:
        pass
    else:
        return (time.time() if now is None else now) - ago
    try:
        return to_epoch(text)
    except ValueError:
        raise StreamdlError(
            f"{flag} {value!r}: expected an ISO time (2024-05-01T12:00:00Z) or a duration such as 30m, 2h, 7d"
        ) from None
