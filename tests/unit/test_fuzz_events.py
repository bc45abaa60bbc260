"""Fuzzing streamdl.event_schema.parse_event: thousands of generated messages, none may crash or hang.

Every message is either an :class:`Event` that keeps the contract (and survives the JSON the
workers write next: UTF-8, read back as the same event) or refused with an
:class:`InvalidEvent` whose reason is in :data:`EVENT_REASONS` and whose message is not empty.
Inputs: arbitrary JSON values (NaN/Infinity literals, huge numbers, lone surrogate escapes),
valid events and perturbations of them (missing fields, wrong types, extra keys, sizes at and
past every limit, timestamps in many forms), raw bytes (invalid UTF-8, truncated JSON), deeply
nested JSON (depth 10..200,000) and JSON at and past ``max_bytes``. Seeded (``derandomize``)
so that CI runs are reproducible.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamdl.event_schema import (
    EVENT_REASONS,
    MAX_FEATURES,
    MAX_ID_BYTES,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    Event,
    InvalidEvent,
    _loads,
    parse_event,
    validate_event,
)
from streamdl.records import to_json
from tests.unit.fuzzing import fuzz, note

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
MAX_FUTURE = 300.0
MAX_BYTES = 1_048_576
TYPE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
FIELDS = ("schema", "id", "ts", "type", "numeric", "categorical", "text", "image_id", "label")


# --- the property ----------------------------------------------------------------


def assert_precise_path_agrees(raw: bytes | str, now: float, max_bytes: int, got: Event | InvalidEvent) -> None:
    """The fast path (msgspec into typed fields, then the rules types cannot say) gives what the precise path
    (json, per-item checks) gives alone: the same event, or the same reason and message."""
    if not raw or len(raw) > max_bytes:
        return  # refused before parsing, by code both paths share
    try:
        want: Event | InvalidEvent = validate_event(_loads(raw), now=now, max_future_secs=MAX_FUTURE)
    except InvalidEvent as exc:
        want = exc
    if isinstance(got, InvalidEvent):
        assert isinstance(want, InvalidEvent), f"fast path refused ({got.reason}) what the precise one accepts"
        assert (got.reason, got.message) == (want.reason, want.message)
    else:
        assert got == want, f"fast path gave {got!r}, the precise one {want!r}"


def check(raw: bytes | str, *, max_bytes: int = MAX_BYTES, now: float = NOW) -> Event | str:
    """An event keeping the contract, or a refusal with a known reason and a message; returns which."""
    try:
        got = parse_event(raw, now=now, max_bytes=max_bytes, max_future_secs=MAX_FUTURE)
    except InvalidEvent as exc:
        assert_precise_path_agrees(raw, now, max_bytes, exc)
        assert exc.reason in EVENT_REASONS, exc.reason
        assert exc.message and str(exc).strip(), repr(exc)
        exc.message.encode()  # the dead-letter topic carries it as UTF-8
        if len(raw) > max_bytes:
            assert exc.reason == "too_large", exc
        note(f"refused: {exc.reason}")
        return exc.reason
    assert len(raw) <= max_bytes
    assert_precise_path_agrees(raw, now, max_bytes, got)
    assert_contract(got, now)
    note("accepted")
    return got


def assert_contract(ev: Event, now: float = NOW) -> None:
    assert isinstance(ev, Event)
    assert isinstance(ev.id, str) and ev.id.strip() and len(ev.id.encode()) <= MAX_ID_BYTES, ev.id
    assert type(ev.ts) is float and math.isfinite(ev.ts) and 0 <= ev.ts <= now + MAX_FUTURE, ev.ts
    assert isinstance(ev.type, str) and TYPE.fullmatch(ev.type), ev.type
    for features, valid in (
        (ev.numeric, lambda v: type(v) is float and math.isfinite(v)),
        (ev.categorical, lambda v: isinstance(v, str)),
    ):
        assert isinstance(features, dict) and len(features) <= MAX_FEATURES
        for name, value in features.items():
            assert isinstance(name, str) and 1 <= len(name) <= MAX_NAME_CHARS, name
            assert value is None or valid(value), (name, value)
    for value in (ev.text, ev.image_id, ev.label):
        assert value is None or isinstance(value, str)
    assert ev.text is None or len(ev.text) <= MAX_TEXT_CHARS
    if ev.is_label:
        assert ev.image_id and ev.label
    # What the workers do next: write it as UTF-8 JSON; read back, it is the same event (ts to the ms).
    raw = to_json(ev.as_json())
    back = parse_event(raw, now=now, max_bytes=len(raw), max_future_secs=MAX_FUTURE)
    assert abs(back.ts - ev.ts) < 0.001 and back == dataclasses.replace(ev, ts=back.ts), (ev, back)


# --- JSON text with tokens json.dumps cannot write -----------------------------------


class Raw(str):
    """A JSON token written verbatim: a number too long for ``int``, a lone surrogate escape..."""


RAW_TOKENS = [
    Raw(t)
    for t in (
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "1e-999",
        "-0",
        "0.0e+0",
        "1E400",
        "-2.5e-400",
        "9" * 400,
        "9" * 4300,
        "9" * 4301,
        "-" + "9" * 5000,
        "1" + "0" * 5000 + ".5",
        "0." + "0" * 5000 + "1",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "123456789012345678901234567890",
        '"\\ud800"',
        '"x\\udfff"',
        '"\\udc00\\ud800"',
        '"\\ud83d\\ude00"',
        '"\\u0000"',
        '"\\u2028\\u2029"',
        '"\\ud800\\u0041"',
        '"\\/\\b\\f\\n\\r\\t"',
    )
]
LONE_SURROGATES = [Raw('"\\ud800"'), Raw('"x\\udfff"'), Raw('"\\udc00\\ud800"'), Raw('"\\ud800\\u0041"')]


def dumps(value, ensure_ascii: bool = True, sep: str = ",") -> str:
    """``json.dumps`` (NaN and Infinity allowed) that writes :class:`Raw` tokens as they are."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, list):
        return "[" + sep.join(dumps(v, ensure_ascii, sep) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + sep.join(f"{dumps(k, ensure_ascii, sep)}:{dumps(v, ensure_ascii, sep)}" for k, v in value.items())
            + "}"
        )
    return json.dumps(value, allow_nan=True, ensure_ascii=ensure_ascii)


def encoded(value, draw) -> bytes | str:
    """``value`` as a message: UTF-8 bytes mostly, sometimes text (``parse_event`` takes both)."""
    text = dumps(value, draw(st.booleans()), draw(st.sampled_from([",", ", ", " ,\n\t"])))
    return text if draw(st.integers(0, 4)) == 0 else text.encode("utf-8", "surrogatepass")


# --- (a) arbitrary JSON values ---------------------------------------------------------

big_ints = st.integers(0, 4000).map(lambda n: 10**n - 1)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    big_ints,
    big_ints.map(lambda v: -v),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(RAW_TOKENS),
)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12), st.sampled_from(LONE_SURROGATES))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=6), max_leaves=30
)


@st.composite
def messages(draw, values):
    return encoded(draw(values), draw)


@fuzz(600)
@given(messages(json_values | st.dictionaries(keys, json_values, max_size=8)))
def test_arbitrary_json_values(raw) -> None:
    check(raw)


event_shaped = st.fixed_dictionaries(
    {"id": json_values, "ts": json_values, "type": json_values},
    optional={name: json_values for name in FIELDS if name not in ("id", "ts", "type")} | {"extra": json_values},
)


@fuzz(400)
@given(messages(event_shaped))
def test_objects_with_the_event_fields_and_arbitrary_values(raw) -> None:
    check(raw)


# --- (b) valid events, then perturbed ----------------------------------------------------

ids = st.one_of(
    st.text(min_size=1, max_size=40).filter(lambda s: s.strip()),
    st.from_regex(r"[a-z]{1,3}-[0-9]{1,6}", fullmatch=True),
    st.sampled_from(["x" * MAX_ID_BYTES, "é" * (MAX_ID_BYTES // 2), "😀" * (MAX_ID_BYTES // 4), "€" * 170 + "ab"]),
)
types = st.one_of(st.sampled_from(["sensor", "log", "a", "A.b-c_9", "x" * 64]), st.from_regex(TYPE, fullmatch=True))
names = st.one_of(st.text(min_size=1, max_size=16), st.sampled_from(["x" * MAX_NAME_CHARS, "😀" * MAX_NAME_CHARS]))
finite = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**300), 10**300))
categories = st.one_of(st.text(max_size=30), st.integers(-(10**30), 10**30))
zones = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m))),
)
PRECISION = {
    "hours": {"minute": 0, "second": 0, "microsecond": 0},
    "minutes": {"second": 0, "microsecond": 0},
    "seconds": {"microsecond": 0},
    "milliseconds": {},
    "microseconds": {},
    "date": {},
}


@st.composite
def iso_times(draw, low=datetime(1970, 1, 2), high=datetime(2027, 1, 13)) -> tuple[str, float]:
    """An ISO-8601 text Python reads, and the epoch seconds it means."""
    moment = draw(st.datetimes(min_value=low, max_value=high, timezones=zones))
    spec = draw(st.sampled_from(sorted(PRECISION)))
    moment = moment.replace(**PRECISION[spec])
    if spec == "milliseconds":
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    if spec == "date":
        text, moment = moment.date().isoformat(), datetime.combine(moment.date(), datetime.min.time(), UTC)
    else:
        text = moment.isoformat(sep=draw(st.sampled_from("T ")), timespec=spec)
        if moment.utcoffset() == timedelta(0) and draw(st.booleans()):
            text = text.replace("+00:00", draw(st.sampled_from("Zz")))
    expected = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return draw(st.sampled_from(["", " ", "\t"])) + text + draw(st.sampled_from(["", " ", "\n"])), expected


valid_times = st.one_of(
    iso_times(),
    st.floats(0, NOW + MAX_FUTURE).map(lambda t: (t, t)),
    st.integers(0, int(NOW + MAX_FUTURE)).map(lambda t: (t, float(t))),
    st.floats(NOW - 10, NOW + MAX_FUTURE).map(lambda t: (t, t)),
)


@st.composite
def valid_events(draw) -> tuple[dict, dict]:
    """A valid event as a dict, and the fields the parsed :class:`Event` must have."""
    ts, expected_ts = draw(valid_times)
    event_type = draw(st.one_of(types, st.just("label")))
    value = {"id": draw(ids), "ts": ts, "type": event_type}
    if draw(st.booleans()):
        value["schema"] = draw(st.sampled_from([1, 1.0]))
    if draw(st.booleans()):
        value["numeric"] = draw(
            st.one_of(
                st.dictionaries(names, st.none() | finite, max_size=8),
                st.just({f"f{i}": float(i) for i in range(MAX_FEATURES)}),
            )
        )
    if draw(st.booleans()):
        value["categorical"] = draw(st.dictionaries(names, st.none() | categories, max_size=8))
    if draw(st.booleans()):
        value["text"] = draw(st.one_of(st.none(), st.text(max_size=200), st.just("y" * MAX_TEXT_CHARS)))
    if event_type == "label" or draw(st.booleans()):
        value["image_id"], value["label"] = draw(ids), draw(ids)
    expected = {
        "id": value["id"],
        "ts": expected_ts,
        "type": event_type,
        "numeric": {k: None if v is None else float(v) for k, v in value.get("numeric", {}).items()},
        "categorical": {k: None if v is None else str(v) for k, v in value.get("categorical", {}).items()},
        "text": value.get("text"),
        "image_id": value.get("image_id"),
        "label": value.get("label"),
    }
    return value, expected


@fuzz(400)
@given(valid_events(), st.booleans(), st.sampled_from([",", ", ", " ,\n\t"]))
def test_valid_events_are_accepted_as_they_are(case, ensure_ascii: bool, sep: str) -> None:
    value, expected = case
    got = check(dumps(value, ensure_ascii, sep).encode())
    assert isinstance(got, Event), got
    assert dataclasses.asdict(got) == expected


bad_times = st.one_of(
    iso_times(low=datetime(1, 1, 1), high=datetime(9999, 12, 31, 23, 59, 59)).map(lambda t: t[0]),
    st.sampled_from(
        [
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+23:59",
            "0001-01-01T00:00:00-01:00",
            "1969-12-31T23:59:59Z",
            "2027-01-15T08:05:01Z",
            "2027-01-15T08:00:00+24:00",
            "2027-02-30",
            "20270115T080000Z",
            "2027-W03-5",
            "2027-01-15T08:00:00.123456789Z",
            "yesterday",
            "",
            " ",
            "1800000000",
            "2027-01-15T08:00:00Z\u0000",
            "２０２７-01-15",
            "NaN",
        ]
    ),
    st.floats(allow_nan=False, allow_infinity=True),
    st.integers(),
    big_ints,
    big_ints.map(lambda v: -v),
    st.floats(NOW - 1000, NOW + 1000).map(lambda t: t * 1000),  # milliseconds as seconds
    st.sampled_from(RAW_TOKENS),
    st.text(max_size=40),
)


@st.composite
def perturbed_events(draw):
    value = dict(draw(valid_events())[0])
    for _ in range(draw(st.integers(1, 3))):
        how = draw(
            st.sampled_from(
                [
                    "drop",
                    "retype",
                    "extra",
                    "many features",
                    "name length",
                    "long id",
                    "long type",
                    "long text",
                    "ts",
                    "schema",
                    "label",
                    "surrogate",
                ]
            )
        )
        if how == "drop" and value:
            del value[draw(st.sampled_from(sorted(value)))]
        elif how == "retype":
            value[draw(st.sampled_from(FIELDS))] = draw(json_values)
        elif how == "extra":
            value.update(draw(st.dictionaries(keys, json_values, min_size=1, max_size=3)))
        elif how == "many features":
            n = draw(st.integers(MAX_FEATURES - 2, MAX_FEATURES + 2))
            item = draw(st.one_of(st.none(), finite, categories, st.sampled_from(RAW_TOKENS)))
            value[draw(st.sampled_from(["numeric", "categorical"]))] = {f"f{i}": item for i in range(n)}
        elif how == "name length":
            n = draw(st.sampled_from([0, 1, MAX_NAME_CHARS - 1, MAX_NAME_CHARS, MAX_NAME_CHARS + 1, 10_000]))
            if not isinstance(value.get("numeric"), dict):  # dropped, or retyped to null or a non-object just before
                value["numeric"] = {}
            value["numeric"]["n" * n] = draw(st.one_of(st.none(), finite))
        elif how == "long id":
            n = draw(st.integers(MAX_ID_BYTES - 3, MAX_ID_BYTES + 3))
            value["id"] = draw(st.sampled_from(["i" * n, "é" * (n // 2) + "i" * (n % 2), " " * n, "😀" * (n // 4)]))
        elif how == "long type":
            value["type"] = "t" * draw(st.sampled_from([0, 63, 64, 65, 100_000]))
        elif how == "long text":
            n = draw(st.sampled_from([MAX_TEXT_CHARS - 1, MAX_TEXT_CHARS, MAX_TEXT_CHARS + 1, 300_000]))
            value[draw(st.sampled_from(["text", "image_id", "label"]))] = "w" * n
        elif how == "ts":
            value["ts"] = draw(bad_times)
        elif how == "schema":
            value["schema"] = draw(st.sampled_from([0, 2, "1", True, None, 1.5, -1, [1], Raw("1e999")]))
        elif how == "label":
            value["type"] = "label"
            value.pop(draw(st.sampled_from(["image_id", "label"])), None)
        elif how == "surrogate":
            where = draw(st.sampled_from(["id", "text", "image_id", "label", "numeric", "categorical", "key"]))
            bad = draw(st.sampled_from(LONE_SURROGATES))
            if where in ("numeric", "categorical"):
                value[where] = {bad: 1} if draw(st.booleans()) else {"n": bad}
            elif where == "key":
                value[bad] = 1
            else:
                value[where] = bad
    return encoded(value, draw)


@fuzz(800)
@given(perturbed_events())
def test_perturbed_events(raw) -> None:
    check(raw)


@fuzz(200)
@given(bad_times, st.sampled_from([bytes, str]))
def test_timestamps_in_many_forms(ts, kind) -> None:
    text = dumps({"id": "e-1", "ts": ts, "type": "sensor"})
    check(text.encode("utf-8", "surrogatepass") if kind is bytes else text)


# --- (c) raw bytes -------------------------------------------------------------------------

BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc3",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xef\xbb\xbf",
    b"\x00",
]


@fuzz(300)
@given(st.binary(max_size=400))
def test_random_bytes(raw: bytes) -> None:
    check(raw)


def anywhere(draw, n: int) -> int:
    """An index in ``range(n + 1)`` spread evenly (Hypothesis's own integers favour the small end)."""
    return n * draw(st.integers(0, 10_000)) // 10_000


@st.composite
def broken_bytes(draw) -> bytes:
    value, _ = draw(valid_events())
    raw = bytearray(dumps(value, ensure_ascii=False).encode())
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["truncate", "insert", "flip", "bom", "utf16"]))
        at = anywhere(draw, len(raw))
        if how == "truncate":
            raw = raw[:at]
        elif how == "insert":
            raw[at:at] = draw(st.sampled_from(BAD_UTF8))
        elif how == "flip" and raw:
            raw[min(at, len(raw) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif how == "bom":
            raw[0:0] = b"\xef\xbb\xbf"
        elif how == "utf16":
            raw = bytearray(b"\xff\xfe" + raw.decode("utf-8", "replace").encode("utf-16-le"))
    return bytes(raw)


@fuzz(400)
@given(broken_bytes())
def test_broken_bytes_of_valid_events(raw: bytes) -> None:
    check(raw)


@fuzz(100)
@given(
    st.text(max_size=30), st.sampled_from(["\ud800", "\udfff", "\udc00\ud800"]), st.sampled_from(["id", "text", "ts"])
)
def test_text_messages_holding_lone_surrogates(prefix: str, surrogate: str, field: str) -> None:
    value = {"id": "e-1", "ts": NOW, "type": "sensor", field: prefix + surrogate}
    check(json.dumps(value, ensure_ascii=False))  # a str message: surrogates as they are, not escaped


# --- (d) deep and huge JSON -------------------------------------------------------------------


@st.composite
def deep_json(draw) -> tuple[bytes, int]:
    depth = draw(st.one_of(st.integers(10, 1_500), st.integers(1_500, 200_000)), label="depth")
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}"), ('{"":', "}"), ("[0,", "]")]))
    leaf = draw(st.sampled_from(["1", "[]", '"x"', "{}", "NaN", "null"]))
    close = draw(st.sampled_from(["all", "none", "one short"]))
    closing = {"all": closer * depth, "none": "", "one short": closer * (depth - 1)}[close]
    nested = opener * depth + leaf + closing
    where = draw(st.sampled_from(["top", "id", "ts", "text", "numeric", "categorical", "extra"]))
    if where == "top":
        return nested.encode(), depth
    inner = {"numeric": '{"n": %s}', "categorical": '{"c": %s}'}.get(where, "%s")
    key = "unknown" if where == "extra" else where
    return f'{{"id": "e-1", "ts": 1800000000, "type": "t", "{key}": {inner % nested}}}'.encode(), depth


@fuzz(150)
@given(deep_json())
def test_deeply_nested_json(case) -> None:
    raw, depth = case
    reason = check(raw, max_bytes=10_000_000)
    if depth >= 50_000:
        assert reason == "invalid_json"


@st.composite
def near_the_limit(draw) -> tuple[bytes, int, str]:
    limit = draw(st.sampled_from([256, 4096, 65_536, MAX_BYTES]))
    delta = draw(st.integers(-3, 3))
    how = draw(st.sampled_from(["spaces", "text", "features", "multibyte"]))
    head = {"id": "e-1", "ts": NOW, "type": "sensor"}
    base = len(dumps(head).encode())
    room = max(0, limit + delta - base)
    if how == "spaces":  # JSON whitespace: still a valid event
        raw = dumps(head).encode() + b" " * room
    elif how == "text":
        raw = dumps({**head, "text": "t" * max(0, room - 10)}).encode()  # 10: ,"text":""
    elif how == "multibyte":
        raw = dumps({**head, "text": "€" * max(0, (room - 10) // 3)}, ensure_ascii=False).encode()
    else:
        n = max(1, room // 16)
        raw = dumps({**head, "numeric": {f"feature-{i:06d}": 1.5 for i in range(n)}}).encode()
    return raw, limit, how


@fuzz(150)
@given(near_the_limit())
def test_json_at_and_past_max_bytes(case) -> None:
    raw, limit, how = case
    reason = check(raw, max_bytes=limit)
    if how == "spaces":  # nothing but the size can be wrong
        assert (reason == "too_large") == (len(raw) > limit)


@fuzz(20, deadline=5000)
@given(st.integers(MAX_BYTES - 3, MAX_BYTES + 3), st.sampled_from(["[", "{", '"', "1", '{"a":[']))
def test_megabyte_of_junk_at_the_default_limit(size: int, unit: str) -> None:
    raw = (unit * (size // len(unit) + 1)).encode()[:size]
    reason = check(raw)
    assert reason == ("too_large" if size > MAX_BYTES else "invalid_json")


# --- regressions the fuzzing found --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    ids=lambda v: v if isinstance(v, str) else None,
    argvalues=[
        # an integer of more than 4300 digits: json.loads raised a bare ValueError (int max_str_digits)
        (b'{"id": "e", "ts": 1, "type": "t", "numeric": {"x": ' + b"1" * 5000 + b"}}", "invalid_json"),
        # an integer ts too large for a float: math.isfinite raised OverflowError
        (b'{"id": "e", "ts": ' + b"9" * 400 + b', "type": "t"}', "bad_timestamp"),
        # an ISO ts past 9999-12-31 UTC: formatting it for the message raised ValueError (year 10000)
        (b'{"id": "e", "ts": "9999-12-31T23:59:59-05:00", "type": "t"}', "bad_timestamp"),
        # an ISO ts before year 1 UTC was accepted, then Event.as_json raised ValueError (year 0)
        (b'{"id": "e", "ts": "0001-01-01T00:00:00+05:00", "type": "t"}', "bad_timestamp"),
        # a lone surrogate escape in id: len(id.encode()) raised UnicodeEncodeError
        (b'{"id": "\\ud800", "ts": 1, "type": "t"}', "wrong_type"),
        # ... and anywhere else it was accepted, then the worker's UTF-8 JSON (to_json) raised
        (b'{"id": "e", "ts": 1, "type": "t", "text": "a\\udfff"}', "wrong_type"),
        (b'{"id": "e", "ts": 1, "type": "t", "categorical": {"\\ud800": "x"}}', "wrong_type"),
        (b'{"id": "e", "ts": 1, "type": "t", "categorical": {"c": "\\ud800"}}', "wrong_type"),
        # type "t\n" passed [A-Za-z0-9_.-]{1,64}$ ($ matches before a final newline)
        (b'{"id": "e", "ts": 1, "type": "t\\n"}', "wrong_type"),
    ],
)
def test_regressions(raw: bytes, reason: str) -> None:
    assert check(raw) == reason
