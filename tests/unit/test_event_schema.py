"""The event contract: every kind of bad input is refused with its reason; good events parse."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from streamdl.event_schema import EVENT_REASONS, Event, InvalidEvent, parse_event

NOW = 1_800_000_000.0


def ok(**fields) -> dict:
    return {"id": "e-1", "ts": "2027-01-15T08:00:00Z", "type": "sensor", **fields}


def parse(value) -> Event:
    raw = value if isinstance(value, (bytes, str)) else json.dumps(value)
    return parse_event(raw.encode() if isinstance(raw, str) else raw, now=NOW, max_bytes=4096)


def refused(value) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse(value)
    assert info.value.reason in EVENT_REASONS and str(info.value)
    return info.value.reason


def test_a_full_event_parses_and_round_trips():
    event = parse(
        ok(
            numeric={"t": 71.5, "rpm": 1500, "gone": None},
            categorical={"machine": "m01", "code": 7},
            text="hello",
            schema=1,
        )
    )
    assert event.ts == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert event.numeric == {"t": 71.5, "rpm": 1500.0, "gone": None}
    assert event.categorical == {"machine": "m01", "code": "7"}
    assert not event.is_label
    assert parse(event.as_json()) == event


def test_timestamps_in_iso_with_or_without_zone_and_epoch_seconds_agree():
    instant = datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    for ts in ("2027-01-15T08:00:00Z", "2027-01-15T08:00:00", "2027-01-15T09:00:00+01:00", instant, int(instant)):
        assert parse(ok(ts=ts)).ts == instant, ts


def test_label_events_need_an_image_id_and_a_label():
    event = parse(ok(type="label", image_id="img-1", label="7"))
    assert event.is_label and (event.image_id, event.label) == ("img-1", "7")
    assert refused(ok(type="label", image_id="img-1")) == "missing_field"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "too_large"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b'{"id": "e", "ts": 1, "type": "t", "numeric": {"x": NaN}}', "non_finite"),
        (b'{"id": "e", "ts": 1, "type": "t", "numeric": {"x": Infinity}}', "non_finite"),
        (b'{"id": "e", "ts": 1, "type": "t", "numeric": {"x": 1e999}}', "non_finite"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(raw, reason):
    assert refused(raw) == reason


@pytest.mark.parametrize("depth", [3_000, 400_000])
def test_deeply_nested_json_is_refused_not_crashing(depth):
    nested = b'{"id": "e", "ts": 1, "type": "t", "text": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(InvalidEvent) as info:
        parse_event(nested, now=NOW, max_bytes=10_000_000)
    assert info.value.reason == "invalid_json" and "nested too deeply" in str(info.value)


@pytest.mark.parametrize(
    "event, reason",
    [
        ({"ts": 1, "type": "t"}, "missing_field"),
        ({"id": "e", "type": "t"}, "missing_field"),
        ({"id": "e", "ts": 1}, "missing_field"),
        (ok(id=None), "missing_field"),
        (ok(id=5), "wrong_type"),
        (ok(id="  "), "wrong_type"),
        (ok(id="x" * 600), "wrong_type"),
        (ok(type="has space"), "wrong_type"),
        (ok(ts=True), "wrong_type"),
        (ok(ts="yesterday"), "bad_timestamp"),
        (ok(ts=1_800_000_000_000), "bad_timestamp"),
        (ok(ts=-5), "bad_timestamp"),
        (ok(ts=NOW + 3600), "future_timestamp"),
        (ok(numeric=[1, 2]), "wrong_type"),
        (ok(numeric={"x": "1.5"}), "wrong_type"),
        (ok(numeric={"x": True}), "wrong_type"),
        (ok(numeric={"x": 10**400}), "non_finite"),
        (ok(categorical={"m": 1.5}), "wrong_type"),
        (ok(categorical={"m": ["a"]}), "wrong_type"),
        (ok(text=5), "wrong_type"),
        (ok(numerics={"x": 1}), "unknown_field"),
        (ok(schema=2), "unsupported_schema"),
    ],
)
def test_events_breaking_the_contract_are_refused_with_a_reason(event, reason):
    assert refused(event) == reason


def test_unknown_categorical_values_and_missing_features_are_fine():
    event = parse(ok(numeric={"x": None}, categorical={"machine": "never-seen-before", "site": None}))
    assert event.categorical == {"machine": "never-seen-before", "site": None} and event.numeric == {"x": None}


def test_events_a_little_in_the_future_are_allowed():
    assert parse(ok(ts=NOW + 60)).ts == NOW + 60


def test_integers_beyond_64_bits_read_as_the_precise_path_reads_them():
    """Both paths keep categorical codes as exact text and numbers as floats, whatever their size."""
    event = parse(ok(numeric={"x": 2**70, "y": 3}, categorical={"code": 12345678901234567890123}))
    assert event.categorical == {"code": "12345678901234567890123"}
    assert event.numeric == {"x": float(2**70), "y": 3.0} and type(event.numeric["y"]) is float
