"""The event contract, version 1: what a message on the events topic must hold, checked on arrival.

An event is one JSON object (UTF-8)::

    {"schema": 1,                                   # optional; 1 is the only version so far
     "id": "m03-000123",                            # required: non-empty text, at most 512 bytes
     "ts": "2026-11-21T15:00:00Z",                  # required: ISO-8601 (zone, else UTC) or epoch seconds
     "type": "sensor",                              # required: [A-Za-z0-9_.-]{1,64}
     "numeric": {"temperature": 71.2, "rpm": null}, # optional: name -> finite number or null (missing)
     "categorical": {"machine": "m03"},             # optional: name -> text or null (missing)
     "text": "free text",                           # optional
     "image_id": "...", "label": "..."}             # optional; both required when type is "label"

``type: "label"`` events are ground truth for retraining (``image_id`` has class ``label``): stored
and archived, never scored. Anything else is refused with an :class:`InvalidEvent` whose
``reason`` is one of :data:`EVENT_REASONS`; unknown categorical *values* are fine (the models
encode them as unknown), unknown top-level *fields* are not (a typo would silently lose data).

Speed: a value is first decoded by msgspec straight into the contract's typed fields (:class:`_Wire`:
compiled, strict JSON in valid UTF-8 only, no lone surrogates, unknown fields refused, numbers checked for
type and range), then the few rules types cannot say (sizes, the ``type`` pattern, the timestamp) are
checked. Whatever that fast path refuses goes through the precise path (``json`` and per-item checks),
which decides and gives the reason; the fast path accepts only what the precise one accepts, as the same
event (``tests/unit/test_fuzz_events.py`` checks both on every generated input).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec

from streamdl.errors import StreamdlError
from streamdl.records import MAX_ID_BYTES
from streamdl.times import iso, to_epoch

SCHEMA_VERSION = 1
LABEL_TYPE = "label"
MAX_FEATURES = 512
MAX_NAME_CHARS = 128
MAX_TEXT_CHARS = 65_536
_TYPE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_FIELDS = {"schema", "id", "ts", "type", "numeric", "categorical", "text", "image_id", "label"}

EVENT_REASONS = (
    "too_large",
    "invalid_json",
    "not_an_object",
    "unsupported_schema",
    "unknown_field",
    "missing_field",
    "wrong_type",
    "non_finite",
    "bad_timestamp",
    "future_timestamp",
)
"""Every value :attr:`InvalidEvent.reason` takes."""


class InvalidEvent(StreamdlError):
    """The message is not a valid event; ``reason`` says why in one word, the message in a sentence."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in EVENT_REASONS:
            raise ValueError(f"unknown event reason {reason!r}; known: {', '.join(EVENT_REASONS)}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self):  # keep reason across pickling
        return (type(self), (self.reason, self.message))


@dataclass(frozen=True)
class Event:
    """One valid event."""

    id: str
    ts: float
    """Seconds since the epoch (UTC)."""
    type: str
    numeric: dict[str, float | None] = field(default_factory=dict)
    categorical: dict[str, str | None] = field(default_factory=dict)
    text: str | None = None
    image_id: str | None = None
    label: str | None = None

    @property
    def is_label(self) -> bool:
        """Ground truth for retraining: stored, never scored."""
        return self.type == LABEL_TYPE

    def as_json(self) -> dict[str, Any]:
        """The event as its contract's JSON object (``ts`` in ISO-8601 UTC)."""
        out: dict[str, Any] = {"schema": SCHEMA_VERSION, "id": self.id, "ts": iso(self.ts), "type": self.type}
        if self.numeric:
            out["numeric"] = dict(self.numeric)
        if self.categorical:
            out["categorical"] = dict(self.categorical)
        for name in ("text", "image_id", "label"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def _refuse_constant(name: str) -> float:
    raise InvalidEvent("non_finite", f"{name} is not a number JSON allows (NaN and Infinity are refused)")


def parse_event(
    raw: bytes | str | None, *, now: float, max_bytes: int = 1_048_576, max_future_secs: float = 300.0
) -> Event:
    """Parse and validate one message value; raises :class:`InvalidEvent` with the reason.

    Args:
        raw: the message value.
        now: the current time (seconds since the epoch): events more than ``max_future_secs``
            after it are refused as ``future_timestamp`` (a clock or unit error upstream).
        max_bytes: larger values are refused before parsing.
    """
    if raw is None or len(raw) == 0:
        raise InvalidEvent("invalid_json", "the message is empty (an event is one JSON object)")
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidEvent("too_large", f"the event is {size} bytes, over the {max_bytes}-byte limit")
    try:
        event = _fast(_WIRE.decode(raw), now, max_future_secs)
    except (msgspec.DecodeError, UnicodeEncodeError, InvalidEvent):  # refused (a str holding a lone surrogate: encode)
        event = None
    if event is not None:
        return event
    return validate_event(_loads(raw), now=now, max_future_secs=max_future_secs)  # decides, and says why


_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
_Features = msgspec.Meta(max_length=MAX_FEATURES)


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    """The event as msgspec decodes it on the fast path; any doubt is left to the precise path."""

    id: str
    ts: str | float
    type: str
    schema: int = SCHEMA_VERSION
    numeric: Annotated[dict[_Name, float | None], _Features] | None = None
    categorical: Annotated[dict[_Name, str | int | None], _Features] | None = None
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)] | None = None
    image_id: str | None = None
    label: str | None = None


_WIRE = msgspec.json.Decoder(_Wire)


def _fast(wire: _Wire, now: float, max_future_secs: float) -> Event | None:
    """The event when ``wire`` keeps every rule its types do not already say, else ``None`` (the precise path
    then decides). msgspec checked the types, the sizes, valid Unicode, finite floats, no ``bool`` for a number."""
    numeric, categorical = wire.numeric or {}, wire.categorical or {}
    if (
        wire.schema != SCHEMA_VERSION
        or not wire.id.strip()
        or len(wire.id.encode()) > MAX_ID_BYTES
        or not _TYPE.fullmatch(wire.type)
        or (wire.type == LABEL_TYPE and (not wire.image_id or not wire.label))
    ):
        return None
    ts = _timestamp(wire.ts)  # InvalidEvent: the precise path says it again
    if ts > now + max_future_secs:
        return None
    if int in set(map(type, categorical.values())):
        categorical = {k: str(v) if type(v) is int else v for k, v in categorical.items()}
    return Event(wire.id, ts, wire.type, numeric, categorical, wire.text, wire.image_id, wire.label)


def _loads(raw: bytes | str) -> Any:
    """The standard library's parse, for its precise error messages (and NaN refused as ``non_finite``)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=_refuse_constant)
    except InvalidEvent:
        raise
    except UnicodeDecodeError as exc:
        raise InvalidEvent("invalid_json", f"the event is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent("invalid_json", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidEvent("invalid_json", "the JSON is nested too deeply") from None
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        raise InvalidEvent("invalid_json", f"invalid JSON: {str(exc).split(';')[0]}") from None


def validate_event(value: Any, *, now: float, max_future_secs: float = 300.0) -> Event:
    """Check a parsed JSON value against the contract; raises :class:`InvalidEvent` (the precise path)."""
    if not isinstance(value, dict):
        raise InvalidEvent("not_an_object", f"an event is a JSON object, got {_json_type(value)}")
    unknown = [] if value.keys() <= _FIELDS else sorted(set(value) - _FIELDS)
    if unknown:
        raise InvalidEvent(
            "unknown_field",
            f"unknown field(s) {', '.join(map(repr, unknown[:5]))}; an event has {', '.join(sorted(_FIELDS))}",
        )
    schema = value.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise InvalidEvent(
            "unsupported_schema", f"schema {schema!r} is not supported (this worker reads version {SCHEMA_VERSION})"
        )
    for name in ("id", "ts", "type"):
        if value.get(name) is None:
            raise InvalidEvent("missing_field", f"the required field {name!r} is missing or null")
    event_id = _text(value, "id")
    if not event_id.strip() or len(event_id.encode()) > MAX_ID_BYTES:
        raise InvalidEvent("wrong_type", f"'id' must be non-empty text of at most {MAX_ID_BYTES} bytes")
    event_type = _text(value, "type")
    if not _TYPE.fullmatch(event_type):  # not match: its $ also matches before a final newline
        raise InvalidEvent("wrong_type", f"'type' must match [A-Za-z0-9_.-]{{1,64}}, got {event_type[:80]!r}")
    ts = _timestamp(value["ts"])
    if ts > now + max_future_secs:
        raise InvalidEvent(
            "future_timestamp",
            f"'ts' {iso(ts)} is {ts - now:.0f}s in the future "
            f"(at most {max_future_secs:.0f}s allowed: a clock or unit error?)",
        )
    numeric = _features(value, "numeric", _number)
    categorical = _features(value, "categorical", _category)
    text, image_id, label = (_optional_text(value, name) for name in ("text", "image_id", "label"))
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise InvalidEvent("too_large", f"'text' has {len(text)} characters, over the {MAX_TEXT_CHARS} allowed")
    if event_type == LABEL_TYPE and (not image_id or not label):
        raise InvalidEvent("missing_field", "a 'label' event needs both 'image_id' and 'label'")
    return Event(event_id, ts, event_type, numeric, categorical, text, image_id, label)


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _text(value: dict[str, Any], name: str) -> str:
    got = value[name]
    if not isinstance(got, str):
        raise InvalidEvent("wrong_type", f"{name!r} must be text, got {_json_type(got)}")
    return _unicode(repr(name), got)


def _unicode(where: str, text: str) -> str:
    """``text``, unless it holds a lone surrogate (``"\\ud800"`` in the JSON): no UTF-8 can carry it on."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidEvent(
            "wrong_type",
            f"{where} is not valid Unicode text: an unpaired surrogate "
            f"U+{ord(text[exc.start]):04X} at character {exc.start}",
        ) from None
    return text


def _optional_text(value: dict[str, Any], name: str) -> str | None:
    return None if value.get(name) is None else _text(value, name)


def _timestamp(got: Any) -> float:
    if isinstance(got, bool) or not isinstance(got, (int, float, str)):
        raise InvalidEvent("wrong_type", f"'ts' must be an ISO-8601 string or epoch seconds, got {_json_type(got)}")
    if isinstance(got, str):
        try:
            seconds = to_epoch(got)
        except (ValueError, OverflowError):
            raise InvalidEvent("bad_timestamp", f"'ts' {got[:64]!r} is not an ISO-8601 time") from None
        if not 0 <= seconds < 1e11:  # as for numbers; outside, iso() cannot write it back
            raise InvalidEvent("bad_timestamp", f"'ts' {got[:64]!r} is before 1970 or after the year 5138")
        return seconds
    if isinstance(got, float) and not math.isfinite(got):  # an int is finite, if maybe too large for a float
        raise InvalidEvent("non_finite", "'ts' is not finite")
    if not 0 <= got < 1e11:  # year 5138: milliseconds given as seconds land far beyond
        raise InvalidEvent("bad_timestamp", f"'ts' {got!r} is not epoch seconds (milliseconds? negative?)")
    return float(got)


def _features(value: dict[str, Any], name: str, check) -> dict[str, Any]:
    got = value.get(name)
    if got is None:
        return {}
    if not isinstance(got, dict):
        raise InvalidEvent("wrong_type", f"{name!r} must be an object of name -> value, got {_json_type(got)}")
    if len(got) > MAX_FEATURES:
        raise InvalidEvent("too_large", f"{name!r} has {len(got)} features, over the {MAX_FEATURES} allowed")
    out = {}
    for key, item in got.items():
        if not key or len(key) > MAX_NAME_CHARS:
            raise InvalidEvent("wrong_type", f"{name} feature names must have 1 to {MAX_NAME_CHARS} characters")
        _unicode(f"a {name} feature name", key)
        out[key] = None if item is None else check(f"{name}.{key}", item)
    return out


def _number(where: str, item: Any) -> float:
    if isinstance(item, bool) or not isinstance(item, (int, float)):
        raise InvalidEvent("wrong_type", f"{where} must be a number or null, got {_json_type(item)}")
    try:
        number = float(item)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidEvent("non_finite", f"{where} is not finite ({item!r})")
    return number


def _category(where: str, item: Any) -> str:
    if isinstance(item, bool) or not isinstance(item, (str, int)):
        raise InvalidEvent("wrong_type", f"{where} must be text (or an integer code) or null, got {_json_type(item)}")
    return _unicode(where, item) if isinstance(item, str) else str(item)
