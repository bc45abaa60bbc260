"""The sample sensor stream: deterministic, valid events, realistic signals, rare known anomalies, scoring."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest

from streamdl.event_schema import validate_event
from streamdl.models.sensor_sample import (
    ANOMALY_KINDS,
    DEFAULT_START,
    NUMERIC,
    QUIET_DAYS,
    Anomaly,
    score_detections,
    sensor_anomalies,
    sensor_events,
)

FAR_FUTURE = 4e9
START = datetime(2026, 1, 5, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def week() -> list[dict]:
    return list(sensor_events())


@pytest.fixture(scope="module")
def table(week: list[dict]) -> dict[str, np.ndarray]:
    """Columns of the default week: numeric (NaN for missing), machine, mode, ts."""
    out = {
        name: np.array([np.nan if e["numeric"][name] is None else e["numeric"][name] for e in week]) for name in NUMERIC
    }
    out["machine"] = np.array([e["categorical"]["machine"] for e in week])
    out["mode"] = np.array([e["categorical"]["mode"] for e in week])
    out["ts"] = np.array([validate_event(e, now=FAR_FUTURE).ts for e in week])
    return out


def test_the_stream_is_deterministic_and_seeded() -> None:
    first = list(itertools.islice(sensor_events(), 500))
    assert first == list(itertools.islice(sensor_events(), 500))
    assert first != list(itertools.islice(sensor_events(seed=1), 500))
    assert list(sensor_events(days=2)) == list(itertools.islice(sensor_events(), 6 * 2 * 1440))  # prefix-stable
    assert sensor_anomalies() == sensor_anomalies()
    assert sensor_anomalies() != sensor_anomalies(seed=1)


def test_every_event_keeps_the_contract(week: list[dict], table: dict[str, np.ndarray]) -> None:
    assert len(week) == 6 * 7 * 1440
    for e in week[:3000] + week[-3000:]:
        event = validate_event(e, now=FAR_FUTURE)
        assert event.type == "sensor" and set(event.numeric) == set(NUMERIC)
        assert set(event.categorical) == {"machine", "site", "mode"}
    assert (
        week[0]["id"] == "sensors-m01-000000"
        and week[0]["ts"] == "2026-01-05T00:00:00.000Z"
        and DEFAULT_START.startswith("2026-01-05")
    )
    assert len({e["id"] for e in week}) == len(week)
    assert np.all(np.diff(table["ts"]) > 0)  # interleaved in time order across machines
    m03 = table["ts"][table["machine"] == "m03"]
    assert np.allclose(np.diff(m03), 60)
    assert set(table["machine"]) == {f"m0{i}" for i in range(1, 7)}
    assert {e["categorical"]["site"] for e in week} == {"north", "south"}
    later = list(sensor_events(machines=2, days=0.01, interval_secs=5, start=1_800_000_000))
    assert len(later) == 2 * 172 and validate_event(later[0], now=FAR_FUTURE).ts == 1_800_000_000


def test_signals_are_coupled_cyclic_and_sometimes_missing(table: dict[str, np.ndarray]) -> None:
    run = (table["mode"] == "run") & (table["machine"] == "m01")
    ok = run & ~np.isnan(table["current"]) & ~np.isnan(table["pressure"])
    assert np.corrcoef(table["current"][ok], table["pressure"][ok])[0, 1] > 0.8  # both follow the load
    hours = (table["ts"] % 86400) / 3600
    night, day = (hours < 4), (hours > 10) & (hours < 18)
    assert np.nanmean(table["current"][day]) > np.nanmean(table["current"][night]) + 5
    assert np.nanmean(table["temperature"][day]) > np.nanmean(table["temperature"][night]) + 5
    idle = table["mode"] == "idle"
    assert 0.05 < idle.mean() < 0.4 and idle[night].mean() > 0.3 and idle[day].mean() < 0.01
    missing = np.mean([np.isnan(table[name]).mean() for name in NUMERIC])
    assert 0.001 < missing < 0.01


def test_anomalies_are_rare_known_and_start_after_the_quiet_days(table: dict[str, np.ndarray]) -> None:
    anomalies = sensor_anomalies()
    assert 30 <= len(anomalies) <= 80
    assert set(a.kind for a in anomalies) == set(ANOMALY_KINDS)
    assert min(a.start for a in anomalies) >= START + QUIET_DAYS * 86400 >= START + 86400
    assert all(60 <= a.end - a.start <= 3600 for a in anomalies)
    inside = np.zeros(len(table["ts"]), bool)
    for a in anomalies:
        inside |= (table["machine"] == a.machine) & (table["ts"] >= a.start) & (table["ts"] < a.end)
    assert 0.01 <= inside.mean() <= 0.03
    by_machine = Counter(a.machine for a in anomalies)
    assert len(by_machine) == 6
    for machine in by_machine:
        mine = sorted((a for a in anomalies if a.machine == machine), key=lambda a: a.start)
        assert all(b.start >= a.end for a, b in zip(mine, mine[1:]))  # no overlaps


def test_an_overheat_shows_in_the_temperature(table: dict[str, np.ndarray]) -> None:
    episode = next(a for a in sensor_anomalies() if a.kind == "overheat")
    mine = table["machine"] == episode.machine
    during = mine & (table["ts"] >= episode.end - 300) & (table["ts"] < episode.end)
    day_before = mine & (table["ts"] >= episode.end - 300 - 86400) & (table["ts"] < episode.end - 86400)
    assert np.nanmean(table["temperature"][during]) > np.nanmean(table["temperature"][day_before]) + 3


def test_score_detections_counts_readings_and_episodes() -> None:
    episodes = [
        Anomaly("m01", "spike", 1000.0, 1300.0, "pressure"),
        Anomaly("m02", "overheat", 5000.0, 8000.0, "temperature"),
    ]
    flagged = [("m01", 1000.0), ("m01", 1299.0), ("m01", 1400.0), ("m02", 1100.0), ("m01", 2000.0)]
    score = score_detections(flagged, episodes, tolerance_secs=120)
    assert (score.true_positives, score.false_positives, score.episodes_found, score.episodes) == (3, 2, 1, 2)
    assert score.precision == pytest.approx(3 / 5) and score.recall == pytest.approx(1 / 2)
    strict = score_detections(flagged, episodes, tolerance_secs=0)
    assert strict.true_positives == 2
    iso = datetime.fromtimestamp(6000, UTC).isoformat().replace("+00:00", "Z")
    assert score_detections([("m02", iso)], episodes).recall == 0.5
    assert score_detections([], episodes) == score_detections([], episodes)
    nothing = score_detections([], episodes)
    assert (nothing.precision, nothing.recall) == (1.0, 0.0)
    assert score_detections([], []).recall == 1.0


@pytest.mark.parametrize(
    "kwargs", [{"machines": 0}, {"machines": 100}, {"days": 0}, {"interval_secs": -1}, {"machines": 2.5}]
)
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        next(sensor_events(**kwargs))
    with pytest.raises(ValueError):
        sensor_anomalies(**kwargs)


def test_values_are_plain_finite_floats(week: list[dict]) -> None:
    for e in week[:200]:
        for value in e["numeric"].values():
            assert value is None or (type(value) is float and math.isfinite(value))
