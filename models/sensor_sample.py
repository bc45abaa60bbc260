"""A synthetic multivariate sensor feed with known anomalies: the sample event stream.

Several machines on two sites report ``temperature`` (°C), ``vibration`` (mm/s), ``pressure``
(bar), ``current`` (A) and ``rpm`` at a fixed interval. The signals are coupled through each
machine's load, which follows the working day (high 06:00-22:00 UTC, low at night, when a
machine may drop to ``mode: "idle"``): current, rpm, pressure and vibration follow the load at
once, temperature follows it with a lag on top of the site's daily ambient cycle. Each machine
drifts slowly (bearing wear raises vibration, a pressure sensor drifts, temperature creeps up),
and now and then a value is missing (``None``).

Anomaly episodes of known kind and time are injected (the ground truth of
:func:`sensor_anomalies`), never in the first :data:`QUIET_DAYS` days, so a model can be trained
on the start of the stream and scored on the rest (:func:`score_detections`).

Everything is computed with seeded NumPy (no downloads) and is prefix-stable: the readings and
episodes do not depend on ``days``, so the first two days of a 7-day stream equal a 2-day stream
(except an episode cut short by the end). Events come in time order; stop early with
``itertools.islice``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from streamdl.times import iso, to_epoch

EVENT_TYPE = "sensor"
ID_PREFIX = "sensors"
DEFAULT_START = "2026-01-05T00:00:00Z"
"""A Monday, midnight UTC."""
SITES = ("north", "south")
NUMERIC = ("temperature", "vibration", "pressure", "current", "rpm")
CATEGORICAL = ("machine", "site", "mode")
QUIET_DAYS = 2
"""No anomaly starts before this many days have passed (training data for unsupervised models)."""
ANOMALY_KINDS = ("spike", "level_shift", "vibration_burst", "correlation_break", "overheat")
MISSING_RATE = 0.003
"""Probability that one reading's value is missing (``None``), per feature."""
MEAN_GAP_SECS = 12 * 3600.0
"""Mean time between anomaly episodes on one machine (after the quiet days)."""
MIN_GAP_SECS = 2 * 3600.0
DEFAULT_TOLERANCE_SECS = 300.0

_DURATIONS = {  # seconds, (shortest, longest)
    "spike": (120, 420),
    "level_shift": (1200, 3600),
    "vibration_burst": (600, 1800),
    "correlation_break": (900, 2700),
    "overheat": (1200, 3600),
}


@dataclass(frozen=True)
class Anomaly:
    """One injected episode on ``machine``: readings with ``start <= ts < end`` (epoch seconds) are affected."""

    machine: str
    kind: str
    start: float
    end: float
    sensor: str
    """The sensor it shows on most (e.g. ``"pressure"`` for a spike)."""


@dataclass(frozen=True)
class DetectionScore:
    """How well flagged readings match the injected episodes (see :func:`score_detections`)."""

    precision: float
    recall: float
    true_positives: int
    false_positives: int
    episodes_found: int
    episodes: int


@dataclass(frozen=True)
class _Machine:
    id: str
    site: str
    rated_rpm: float
    load_scale: float
    base_current: float
    temp_offset: float
    vibration_factor: float
    wear_per_day: float
    pressure_drift_per_day: float
    offset_secs: float


def sensor_events(
    *, machines: int = 6, days: float = 7, interval_secs: float = 60, seed: int = 0, start: str | float = DEFAULT_START
) -> Iterator[dict]:
    """The sample stream: event dicts in the event contract's JSON shape, in time order.

    Each event is ``{"schema": 1, "id": "sensors-m03-000123", "ts": "...Z", "type": "sensor",
    "numeric": {name: float | None}, "categorical": {"machine", "site", "mode"}}``. Machine ``j``
    (0-based) reads at ``start + i * interval_secs + j * interval_secs / machines``.

    Args:
        machines: how many machines (``m01``, ``m02``, ...), 1 to 99.
        days: how long the stream lasts.
        interval_secs: seconds between two readings of one machine.
        seed: the random seed; the same arguments always give the same stream.
        start: the first reading's time: ISO-8601 (zone, else UTC) or epoch seconds.
    """
    t0, steps, fleet = _setup(machines, days, interval_secs, start)
    columns = [_simulate(m, t0, steps, interval_secs, seed) for m in fleet]
    for i in range(steps):
        for m, (ts, values, modes) in zip(fleet, columns):
            numeric = {name: (None if math.isnan(v[i]) else float(v[i])) for name, v in values.items()}
            yield {
                "schema": 1,
                "id": f"{ID_PREFIX}-{m.id}-{i:06d}",
                "ts": iso(ts[i]),
                "type": EVENT_TYPE,
                "numeric": numeric,
                "categorical": {"machine": m.id, "site": m.site, "mode": modes[i]},
            }


def sensor_anomalies(
    *, machines: int = 6, days: float = 7, interval_secs: float = 60, seed: int = 0, start: str | float = DEFAULT_START
) -> list[Anomaly]:
    """The episodes injected into :func:`sensor_events` with the same arguments, by start time.

    An episode that would run past the end of the stream is cut at the end.
    """
    t0, steps, fleet = _setup(machines, days, interval_secs, start)
    found = [a for m in fleet for a in _episodes(m, t0, steps, interval_secs, seed)[0]]
    return sorted(found, key=lambda a: (a.start, a.machine))


def score_detections(
    flagged: Iterable[tuple[str, float | str]],
    anomalies: Sequence[Anomaly],
    *,
    tolerance_secs: float = DEFAULT_TOLERANCE_SECS,
) -> DetectionScore:
    """Score flagged readings ``(machine, ts)`` (epoch seconds or ISO-8601) against the episodes.

    A flagged reading is a *true positive* when it lies in an episode of its machine, that is
    ``start <= ts < end + tolerance_secs`` (the tolerance forgives alerts just after an episode:
    lagging signals take a moment to settle); otherwise it is a *false positive*.

    * ``precision`` = true positives / flagged readings (1.0 when nothing is flagged);
    * ``recall`` = episodes with at least one true positive / episodes (1.0 when there are none).
    """
    windows: dict[str, list[tuple[int, float, float]]] = {}
    for k, a in enumerate(anomalies):
        windows.setdefault(a.machine, []).append((k, a.start, a.end + tolerance_secs))
    tp = fp = 0
    found: set[int] = set()
    for machine, ts in flagged:
        t = to_epoch(ts)
        hits = [k for k, begin, end in windows.get(machine, ()) if begin <= t < end]
        if hits:
            tp += 1
            found.update(hits)
        else:
            fp += 1
    episodes = len(anomalies)
    return DetectionScore(
        precision=tp / (tp + fp) if tp + fp else 1.0,
        recall=len(found) / episodes if episodes else 1.0,
        true_positives=tp,
        false_positives=fp,
        episodes_found=len(found),
        episodes=episodes,
    )


# --- Simulation ------------------------------------------------------------------------------
def _setup(machines: int, days: float, interval_secs: float, start: str | float) -> tuple[float, int, list[_Machine]]:
    if isinstance(machines, bool) or not isinstance(machines, int) or not 1 <= machines <= 99:
        raise ValueError(f"machines must be an integer from 1 to 99. Received: machines={machines!r}")
    if not days > 0:
        raise ValueError(f"days must be positive. Received: days={days!r}")
    if not interval_secs > 0:
        raise ValueError(f"interval_secs must be positive. Received: interval_secs={interval_secs!r}")
    steps = int(days * 86400 // interval_secs)
    return to_epoch(start), steps, [_machine(j, machines, interval_secs) for j in range(machines)]


def _machine(j: int, machines: int, interval_secs: float) -> _Machine:
    rng = np.random.default_rng([7, j])  # the fleet is fixed: same machines for every seed
    return _Machine(
        id=f"m{j + 1:02d}",
        site=SITES[j % 2],
        rated_rpm=float(rng.choice([1450.0, 1480.0, 2900.0, 2950.0])),
        load_scale=float(rng.uniform(0.85, 1.1)),
        base_current=float(rng.uniform(3.0, 6.0)),
        temp_offset=float(rng.uniform(-3.0, 3.0)),
        vibration_factor=float(rng.uniform(0.8, 1.25)),
        wear_per_day=float(rng.uniform(0.005, 0.02)),
        pressure_drift_per_day=float(rng.uniform(-0.012, 0.012)),
        offset_secs=round(j * interval_secs / machines, 3),
    )


def _simulate(m: _Machine, t0: float, steps: int, interval: float, seed: int):
    """``(ts, {feature: values with NaN for missing}, modes)`` of one machine."""

    def rng(k: int) -> np.random.Generator:  # one stream per signal: prefix-stable in ``steps``
        return np.random.default_rng([seed, int(m.id[1:]), k])

    ts = t0 + m.offset_secs + np.arange(steps) * interval
    hour = (ts % 86400) / 3600
    days = (ts - t0) / 86400
    shift = 0.5 * (np.tanh((hour - 6) / 0.75) - np.tanh((hour - 22) / 0.75))  # ~1 from 06:00 to 22:00
    load = np.clip((0.17 + 0.58 * shift) * m.load_scale + _ar1(rng(1), steps, interval, tau=2700, std=0.05), 0.03, 1.0)
    modes = _modes(load)
    idle = np.array([mode == "idle" for mode in modes])

    speed = np.where(idle, 0.3, 0.7 + 0.3 * load)  # fraction of rated rpm
    rpm = m.rated_rpm * speed + rng(2).normal(0, 5, steps)
    current = m.base_current + 24 * load * speed + rng(3).normal(0, 0.35, steps)
    pressure = 2.2 + 3.0 * load + m.pressure_drift_per_day * days + rng(4).normal(0, 0.05, steps)
    vibration = (0.6 + 2.0 * speed**2) * m.vibration_factor * (1 + m.wear_per_day * days) + rng(5).normal(
        0, 0.06, steps
    )
    ambient = (14.0 if m.site == "north" else 21.0) + 3.0 * np.sin(2 * np.pi * (hour - 9) / 24)
    temperature = (
        ambient + m.temp_offset + 30 * _lag(load, interval, tau=900) + 0.15 * days + rng(6).normal(0, 0.3, steps)
    )
    values = {"temperature": temperature, "vibration": vibration, "pressure": pressure, "current": current, "rpm": rpm}

    _, effects = _episodes(m, t0, steps, interval, seed)
    for sensor, index, change in effects:
        if sensor.endswith("*"):
            values[sensor[:-1]][index] *= change
        else:
            values[sensor][index] += change
    for k, name in enumerate(NUMERIC):
        decimals = {"temperature": 2, "vibration": 3, "pressure": 3, "current": 2, "rpm": 1}[name]
        v = np.round(values[name], decimals)
        v[rng(10 + k).random(steps) < MISSING_RATE] = np.nan
        values[name] = v
    return ts, values, modes


def _episodes(m: _Machine, t0: float, steps: int, interval: float, seed: int):
    """``(anomalies, effects)`` of one machine: effects are ``(sensor, index, change)``; ``sensor*`` multiplies."""
    rng = np.random.default_rng([seed, int(m.id[1:]), 9])
    first = t0 + m.offset_secs
    end_of_stream = first + steps * interval
    found: list[Anomaly] = []
    effects: list[tuple[str, np.ndarray, np.ndarray | float]] = []
    t = t0 + QUIET_DAYS * 86400 + rng.exponential(MEAN_GAP_SECS / 2)
    while True:
        kind = ANOMALY_KINDS[int(rng.integers(len(ANOMALY_KINDS)))]
        low, high = _DURATIONS[kind]
        duration = float(rng.uniform(low, high))
        magnitude = float(rng.uniform(0, 1))  # 0 = smallest, 1 = largest of the kind
        choice = int(rng.integers(2))
        begin = max(0, math.ceil((t - first) / interval))
        if begin >= steps:
            break
        stop = min(steps, begin + max(1, round(duration / interval)))
        index = np.arange(begin, stop)
        ramp = (index - begin + 1) / max(1, stop - begin)
        if kind == "spike":  # a pressure surge or a current spike (a jammed feed)
            sensor = ("pressure", "current")[choice]
            effects.append((sensor, index, (0.5 + 0.4 * magnitude) if sensor == "pressure" else (4 + 3 * magnitude)))
        elif kind == "level_shift":  # a sensor off calibration
            sensor = ("pressure", "temperature")[choice]
            effects.append((sensor, index, (0.35 + 0.3 * magnitude) if sensor == "pressure" else -(4 + 3 * magnitude)))
        elif kind == "vibration_burst":  # a loose part or a failing bearing: vibration up by 30-60%, unsteady
            sensor = "vibration"
            effects.append(("vibration*", index, 1 + (0.3 + 0.3 * magnitude) * rng.uniform(0.7, 1.3, len(index))))
        elif kind == "correlation_break":  # an electrical fault: current up, nothing else follows
            sensor = "current"
            effects.append(("current", index, 3.5 + 2.5 * magnitude))
        else:  # overheat: cooling fails, temperature climbs while the load stays as it was
            sensor = "temperature"
            effects.append(("temperature", index, (5 + 4 * magnitude) * ramp))
        found.append(Anomaly(m.id, kind, first + begin * interval, first + stop * interval, sensor))
        t = min(first + stop * interval, end_of_stream) + MIN_GAP_SECS + rng.exponential(MEAN_GAP_SECS)
    return found, effects


def _ar1(rng: np.random.Generator, steps: int, interval: float, *, tau: float, std: float) -> np.ndarray:
    """A stationary AR(1) series with correlation time ``tau`` seconds and standard deviation ``std``."""
    phi = math.exp(-interval / tau)
    x = rng.normal(0, std)
    noise = rng.normal(0, std * math.sqrt(1 - phi * phi), steps)
    out = np.empty(steps)
    for i in range(steps):
        x = phi * x + noise[i]
        out[i] = x
    return out


def _lag(x: np.ndarray, interval: float, *, tau: float) -> np.ndarray:
    """``x`` through a first-order lag of ``tau`` seconds (starting settled)."""
    alpha = 1 - math.exp(-interval / tau)
    out = np.empty_like(x)
    y = x[0] if len(x) else 0.0
    for i in range(len(x)):
        y += alpha * (x[i] - y)
        out[i] = y
    return out


def _modes(load: np.ndarray) -> list[str]:
    """``"idle"`` below a low load, ``"run"`` above a higher one (hysteresis: no flapping)."""
    mode, out = "run", []
    for value in load:
        if mode == "run" and value < 0.14:
            mode = "idle"
        elif mode == "idle" and value > 0.24:
            mode = "run"
        out.append(mode)
    return out
