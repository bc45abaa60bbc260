"""Drift without labels: each window's predictions of a version against the version's reference.

The reference of a version is the one saved with it in the registry, computed from its validation split
when it was registered (:mod:`~streamdl.streams.quality.reference`); a version without one (registered
before references existed, or no registry at all) falls back to the first ``drift_reference_size``
predictions this worker made with it. Each tumbling window of ``drift_window_secs`` (processing time) is
compared with the reference on three signals:

* ``class_psi`` / ``class_js``: the predicted-class distribution (population stability index,
  Jensen-Shannon divergence);
* ``confidence_psi``: the top-class confidence histogram (ten bins);
* ``embedding_mmd``: squared MMD (Gaussian kernel, median bandwidth) between a reservoir sample of the
  window's embeddings and one of the reference's.

Per batch the cost is a few counter updates and a reservoir step per image; the MMD runs once per
window on two reservoirs (``drift_reservoir_size`` rows each).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamdl.records import Document
from streamdl.settings import Settings
from streamdl.streams.quality.stats import confidence_bin, jensen_shannon, median_distance, mmd, psi

logger = logging.getLogger(__name__)

CONFIDENCE_BINS = 10
REGISTRY, FIRST_PREDICTIONS = "registry", "first_predictions"
"""Where a version's reference came from."""

References = Callable[[str, str], "Sample | None"]
"""``(model name, version) -> the reference saved with the version``, or ``None`` when it has none."""


@dataclass
class Sample:
    """Predicted classes, a confidence histogram and a reservoir of embeddings."""

    capacity: int
    seed: int = 0
    n: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(CONFIDENCE_BINS))
    confidence_sum: float = 0.0
    reservoir: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def as_json(self) -> dict[str, Any]:
        """The sample as JSON (the reservoir as unit-length rows, 6 decimals)."""
        rows = _unit_rows(self.reservoir).round(6).tolist() if self.reservoir else []
        return {
            "n": self.n,
            "classes": dict(self.classes),
            "confidence": self.confidence.tolist(),
            "confidence_sum": self.confidence_sum,
            "reservoir": rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], capacity: int) -> Sample:
        """A sample saved by :meth:`as_json`; a reservoir larger than ``capacity`` is subsampled to it."""
        confidence = np.asarray(data["confidence"], float)
        if confidence.shape != (CONFIDENCE_BINS,):
            raise ValueError(f"a confidence histogram of {confidence.shape} bins, expected {CONFIDENCE_BINS}")
        rows = [np.asarray(r, np.float32) for r in data.get("reservoir") or []]
        if len(rows) > capacity:
            keep = random.Random(0).sample(range(len(rows)), capacity)
            rows = [rows[i] for i in sorted(keep)]
        classes = {str(k): int(v) for k, v in data["classes"].items()}
        return cls(capacity, 0, int(data["n"]), classes, confidence, float(data["confidence_sum"]), rows)

    def add(self, label: str | None, score: float | None, embedding: Any) -> None:
        self.n += 1
        key = "" if label is None else str(label)
        self.classes[key] = self.classes.get(key, 0) + 1
        conf = float(score or 0.0)
        self.confidence[confidence_bin(conf, CONFIDENCE_BINS)] += 1
        self.confidence_sum += conf
        if embedding is None:
            return
        if len(self.reservoir) < self.capacity:  # Algorithm R
            self.reservoir.append(np.asarray(embedding, np.float32))
        else:
            j = self._rng.randrange(self.n)
            if j < self.capacity:
                self.reservoir[j] = np.asarray(embedding, np.float32)


@dataclass
class DriftReport:
    """One window of one version against its reference."""

    model_name: str
    model_version: str
    window_start: float
    window_end: float
    predictions: int
    class_psi: float
    class_js: float
    confidence_psi: float
    mean_confidence: float
    embedding_mmd: float | None
    reference: str = FIRST_PREDICTIONS
    """Where the reference came from: ``registry`` (the version's validation split) or ``first_predictions``."""

    def signals(self) -> dict[str, float]:
        out = {"class_psi": self.class_psi, "class_js": self.class_js, "confidence_psi": self.confidence_psi}
        if self.embedding_mmd is not None:
            out["embedding_mmd"] = self.embedding_mmd
        return out

    def as_json(self) -> dict[str, Any]:
        return {"kind": "drift", **asdict(self)}


def compare(reference: Sample, window: Sample, bandwidth: float | None) -> dict[str, float | None]:
    """The drift signals of ``window`` against ``reference``."""
    classes = sorted(set(reference.classes) | set(window.classes))
    ref = np.array([reference.classes.get(c, 0) for c in classes], float)
    cur = np.array([window.classes.get(c, 0) for c in classes], float)
    embedding = None
    if len(reference.reservoir) >= 2 and len(window.reservoir) >= 2:
        embedding = mmd(np.stack(reference.reservoir), np.stack(window.reservoir), bandwidth)
    return {
        "class_psi": psi(ref, cur),
        "class_js": jensen_shannon(ref, cur),
        "confidence_psi": psi(reference.confidence, window.confidence),
        "embedding_mmd": embedding,
    }


@dataclass
class _Version:
    reference: Sample
    window: Sample
    window_start: float
    source: str = FIRST_PREDICTIONS
    bandwidth: float | None = None
    ready: bool = False
    """The reference is complete: loaded from the registry, or ``drift_reference_size`` predictions made."""

    def complete(self) -> None:
        self.ready = True
        if len(self.reference.reservoir) >= 2:
            self.bandwidth = median_distance(_unit_rows(self.reference.reservoir))


class VersionWindows:
    """What both drift trackers share: per model version a state with a tumbling window of ``drift_window_secs``
    (processing time), the saved references (``references``, asked once per version, when its first prediction
    arrives) and the closing of windows; a subclass judges a closed window (:meth:`_close`)."""

    def __init__(self, settings: Settings, clock: Callable[[], float], references: Callable[[str, str], Any] | None):
        self.window_secs = settings.drift_window_secs
        self.reference_size = settings.drift_reference_size
        self.min_predictions = settings.drift_min_predictions
        self.clock = clock
        self.references = references
        self.max_versions = settings.drift_max_versions
        self.versions: dict[tuple[str, str], Any] = {}
        """The state of each version, least recently seen first."""

    def _admit(self, key: tuple[str, str], state: Any) -> Any:
        """Track ``key``; beyond ``drift_max_versions`` the version seen least recently is forgotten."""
        while len(self.versions) >= self.max_versions:
            gone = next(iter(self.versions))
            del self.versions[gone]
            logger.info("drift of %s:%s no longer tracked (drift_max_versions %d)", *gone, self.max_versions)
        self.versions[key] = state
        return state

    def _seen(self, keys: Iterable[tuple[str, str]]) -> None:
        """Mark ``keys`` as the versions seen most recently."""
        for key in keys:
            if key in self.versions:
                self.versions[key] = self.versions.pop(key)

    def close_windows(self, now: float) -> list[Any]:
        """Close every window that ended by ``now``: the reports of those judged."""
        out = []
        for key, state in self.versions.items():
            end = state.window_start + self.window_secs
            if now < end:
                continue
            report = self._close(key, state, end)
            if report is not None:
                out.append(report)
            state.window_start = self._start(now)
        return out

    def _close(self, key: tuple[str, str], state: Any, end: float) -> Any:
        """The report of ``state``'s window ending at ``end`` (``None``: not judged); starts its next window."""
        raise NotImplementedError

    def _saved(self, key: tuple[str, str]) -> Any:
        return self.references(*key) if self.references is not None else None

    def _start(self, now: float) -> float:
        return now - now % self.window_secs


class DriftTracker(VersionWindows):
    """Per model version: the reference, the open window, and the reports of closed windows.

    ``references`` gives the reference saved with a version; without one the version's first
    ``drift_reference_size`` predictions make it."""

    def __init__(
        self, settings: Settings, clock: Callable[[], float] = time.time, references: References | None = None
    ) -> None:
        super().__init__(settings, clock, references)
        self.reservoir = settings.drift_reservoir_size

    def observe(self, documents: Sequence[Document]) -> list[DriftReport]:
        """Add a batch of image documents; returns the reports of windows that closed."""
        now = self.clock()
        closed = self.close_windows(now)
        seen: set[tuple[str, str]] = set()
        for doc in documents:
            body = doc.body
            key = (str(body.get("model_name")), str(body.get("model_version")))
            seen.add(key)
            state = self.versions.get(key) or self._new_version(key, now)
            if not state.ready:
                state.reference.add(body.get("label"), body.get("score"), body.get("embedding"))
                if state.reference.n >= self.reference_size:
                    state.complete()
            else:
                state.window.add(body.get("label"), body.get("score"), body.get("embedding"))
        self._seen(seen)
        return closed

    def _new_version(self, key: tuple[str, str], now: float) -> _Version:
        saved = self._saved(key)
        state = self._admit(
            key, _Version(saved or Sample(self.reservoir, seed=1), Sample(self.reservoir, seed=2), self._start(now))
        )
        if saved is not None:
            state.source = REGISTRY
            state.complete()
        return state

    def _close(self, key: tuple[str, str], state: _Version, end: float) -> DriftReport | None:
        """A full window compared with its complete reference."""
        window, report = state.window, None
        if window.n >= self.min_predictions and state.ready:
            report = DriftReport(
                model_name=key[0],
                model_version=key[1],
                window_start=state.window_start,
                window_end=end,
                predictions=window.n,
                mean_confidence=window.confidence_sum / window.n,
                reference=state.source,
                **compare(state.reference, window, state.bandwidth),
            )
        state.window = Sample(self.reservoir, seed=int(end))
        return report


def _unit_rows(rows: list[np.ndarray]) -> np.ndarray:
    x = np.stack(rows).astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)
