"""Per-feature drift of the event stream: each window's events of a model version against the version's reference.

Per feature, the population stability index (:func:`~streamdl.streams.quality.stats.psi`) of its histogram:

* a **numeric** feature on the reference's deciles (up to ``FEATURE_BINS`` bins between its quantiles), plus a
  bin for the events that lack it;
* a **categorical** feature on its ``drift_top_categories`` most frequent categories in the reference, one
  ``other`` bin for the rest and one for the events that lack it;
* the **anomaly score** (autoencoders) on its reference deciles, as signal ``anomaly_psi``.

At most ``drift_max_features`` features are tracked: those most present in the reference (ties by name).
The reference is the one saved with the version in the registry (:func:`fit_reference` over its training
events, :mod:`~streamdl.streams.quality.reference`); without one, the version's first
``drift_reference_size`` events make it (kept raw until then: at most that many rows of tracked features).
Per batch the cost is one ``searchsorted`` and one ``bincount`` per tracked feature; per window one PSI each.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamdl.records import Document
from streamdl.settings import Settings
from streamdl.streams.quality.drift import FIRST_PREDICTIONS, REGISTRY, VersionWindows
from streamdl.streams.quality.stats import psi

FEATURE_BINS = 10
ANOMALY = "anomaly_psi"
FEATURE_PREFIX = "feature_psi:"

Row = tuple[Mapping[str, Any], Mapping[str, Any], "float | None"]
"""What drift sees of one event: its numeric features, its categorical features and its anomaly score."""


def row_of(body: Mapping[str, Any]) -> Row:
    """The drift row of an indexed event document."""
    return body.get("numeric") or {}, body.get("categorical") or {}, body.get("anomaly_score")


@dataclass
class FeatureReference:
    """Per tracked feature: its bins (numeric: inner edges; categorical: the top categories) and the reference's
    count per bin; the anomaly score's edges and counts when the model gives one."""

    n: int
    numeric: dict[str, list[float]] = field(default_factory=dict)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    anomaly: list[float] | None = None
    counts: dict[str, list[int]] = field(default_factory=dict)
    """Signal name -> reference count per bin."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], max_features: int) -> FeatureReference:
        """A saved reference, keeping at most ``max_features`` features (the first saved: numeric ones, then
        categorical ones, each the most present first)."""
        numeric = {str(k): [float(e) for e in v] for k, v in data["numeric"].items()}
        categorical = {str(k): [str(c) for c in v] for k, v in data["categorical"].items()}
        keep = set([*numeric, *categorical][:max_features])
        ref = cls(
            int(data["n"]),
            {k: v for k, v in numeric.items() if k in keep},
            {k: v for k, v in categorical.items() if k in keep},
            None if data.get("anomaly") is None else [float(e) for e in data["anomaly"]],
        )
        ref.counts = {k: [int(c) for c in v] for k, v in data["counts"].items() if k in ref.signals()}
        if set(ref.counts) != set(ref.signals()):
            raise ValueError(f"the reference has no counts for {sorted(set(ref.signals()) - set(ref.counts))}")
        return ref

    def signals(self) -> list[str]:
        names = [FEATURE_PREFIX + f for f in [*self.numeric, *self.categorical]]
        return [*names, ANOMALY] if self.anomaly is not None else names


def fit_reference(rows: Sequence[Row], max_features: int, top_categories: int) -> FeatureReference:
    """The reference of ``rows`` (the events a version was trained on, or its first ones served)."""
    if not rows:
        raise ValueError("a feature reference needs at least one event")
    present: Counter[str] = Counter()
    kinds: dict[str, str] = {}
    for numeric, categorical, _ in rows:
        for name, value in numeric.items():
            if _number(value) is not None:
                present[name] += 1
                kinds.setdefault(name, "numeric")
        for name, value in categorical.items():
            if value is not None:
                present[name] += 1
                kinds.setdefault(name, "categorical")
    order = [f for f, _ in sorted(present.items(), key=lambda kv: (-kv[1], kv[0]))][:max_features]
    ref = FeatureReference(len(rows))
    for name in order:
        if kinds[name] == "numeric":
            values = np.array([_number(n.get(name)) for n, _, _ in rows], float)
            ref.numeric[name] = _edges(values)
        else:
            counts = Counter(str(c[name]) for _, c, _ in rows if c.get(name) is not None)
            ref.categorical[name] = [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][
                :top_categories
            ]
    scores = np.array([np.nan if a is None else float(a) for _, _, a in rows], float)
    if np.isfinite(scores).any():
        ref.anomaly = _edges(scores)
    ref.counts = {k: v.astype(int).tolist() for k, v in FeatureCounts(ref).add(rows).bins.items()}
    return ref


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _edges(values: np.ndarray) -> list[float]:
    """The inner bin edges of a numeric column: its distinct deciles (missing values left out)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return []
    return sorted(set(np.quantile(finite, np.linspace(0, 1, FEATURE_BINS + 1)[1:-1]).round(9).tolist()))


class FeatureCounts:
    """Per tracked signal, events per bin (value bins, then ``other`` for categories, then ``missing``)."""

    def __init__(self, reference: FeatureReference) -> None:
        self.reference = reference
        self.n = 0
        self._edges = {f: np.asarray(e, float) for f, e in reference.numeric.items()}
        self._index = {f: {c: i for i, c in enumerate(cats)} for f, cats in reference.categorical.items()}
        self.bins: dict[str, np.ndarray] = {
            **{FEATURE_PREFIX + f: np.zeros(len(e) + 2) for f, e in self._edges.items()},
            **{FEATURE_PREFIX + f: np.zeros(len(c) + 2) for f, c in self._index.items()},
        }
        if reference.anomaly is not None:
            self._anomaly = np.asarray(reference.anomaly, float)
            self.bins[ANOMALY] = np.zeros(len(self._anomaly) + 2)

    def add(self, rows: Sequence[Row]) -> FeatureCounts:
        """Count a batch of rows: one ``searchsorted`` and one ``bincount`` per signal."""
        if not rows:
            return self
        self.n += len(rows)
        for name, edges in self._edges.items():  # None -> NaN: the missing bin (the event contract: numbers or null)
            values = np.array([n.get(name) for n, _, _ in rows], float)
            self._count(FEATURE_PREFIX + name, edges, values)
        for name, index in self._index.items():
            other = len(index)
            codes = [other + 1 if c.get(name) is None else index.get(str(c[name]), other) for _, c, _ in rows]
            self.bins[FEATURE_PREFIX + name] += np.bincount(codes, minlength=other + 2)
        if ANOMALY in self.bins:
            self._count(ANOMALY, self._anomaly, np.array([a for _, _, a in rows], float))
        return self

    def _count(self, signal: str, edges: np.ndarray, values: np.ndarray) -> None:
        missing = len(edges) + 1
        codes = np.where(np.isfinite(values), np.searchsorted(edges, np.nan_to_num(values), side="right"), missing)
        self.bins[signal] += np.bincount(codes, minlength=missing + 1)

    def psi(self) -> dict[str, float]:
        """Every signal's PSI against the reference's counts."""
        ref = self.reference.counts
        return {s: psi(np.asarray(ref[s], float), counts) for s, counts in self.bins.items()}


@dataclass
class FeatureDriftReport:
    """One window of one event model version against its reference."""

    model_name: str
    model_version: str
    window_start: float
    window_end: float
    predictions: int
    """Scored events in the window."""
    psi: dict[str, float]
    reference: str

    def signals(self) -> dict[str, float]:
        return dict(self.psi)

    def as_json(self) -> dict[str, Any]:
        """The report document (``kind: feature_drift``): every PSI in ``feature_psi`` (not indexed field by field),
        the anomaly score's and the largest feature PSI as fields."""
        features = {s[len(FEATURE_PREFIX) :]: v for s, v in self.psi.items() if s.startswith(FEATURE_PREFIX)}
        top = max(features, key=features.get) if features else None
        return {
            "kind": "feature_drift",
            "model_name": self.model_name,
            "model_version": self.model_version,
            "predictions": self.predictions,
            "feature_psi": features,
            "anomaly_psi": self.psi.get(ANOMALY),
            "max_feature_psi": features.get(top) if top else None,
            "max_feature": top,
            "reference": self.reference,
        }


References = Callable[[str, str], "FeatureReference | None"]


@dataclass
class _Version:
    window_start: float
    counts: FeatureCounts | None = None
    source: str = FIRST_PREDICTIONS
    first: list[Row] = field(default_factory=list)
    """The first events, kept until they make the reference (no saved one)."""


class FeatureDriftTracker(VersionWindows):
    """Per event model version: the reference, the open window's counts, the reports of closed windows."""

    def __init__(
        self, settings: Settings, clock: Callable[[], float] = time.time, references: References | None = None
    ) -> None:
        super().__init__(settings, clock, references)
        self.max_features = settings.drift_max_features
        self.top_categories = settings.drift_top_categories

    def observe(self, documents: Sequence[Document]) -> list[FeatureDriftReport]:
        """Add a batch of event documents (scored ones; label events are left out); returns closed windows."""
        now = self.clock()
        closed = self.close_windows(now)
        by_version: dict[tuple[str, str], list[Row]] = {}
        for doc in documents:
            body = doc.body
            if body.get("model_version") is None or body.get("type") == "label":
                continue
            key = (str(body.get("model_name")), str(body.get("model_version")))
            by_version.setdefault(key, []).append(row_of(body))
        for key, rows in by_version.items():
            state = self.versions.get(key) or self._new_version(key, now)
            if state.counts is None:
                take = rows[: self.reference_size - len(state.first)]
                state.first += take
                rows = rows[len(take) :]
                if len(state.first) >= self.reference_size:
                    reference = fit_reference(state.first, self.max_features, self.top_categories)
                    state.counts, state.first = FeatureCounts(reference), []
            if state.counts is not None:
                state.counts.add(rows)
        self._seen(by_version)
        return closed

    def _new_version(self, key: tuple[str, str], now: float) -> _Version:
        saved = self._saved(key)
        state = self._admit(key, _Version(self._start(now)))
        if saved is not None:
            state.counts, state.source = FeatureCounts(saved), REGISTRY
        return state

    def _close(self, key: tuple[str, str], state: _Version, end: float) -> FeatureDriftReport | None:
        """A window of ``drift_min_predictions`` scored events, against the complete reference."""
        counts, report = state.counts, None
        if counts is None:
            return None
        if counts.n >= self.min_predictions:
            report = FeatureDriftReport(*key, state.window_start, end, counts.n, counts.psi(), state.source)
        state.counts = FeatureCounts(counts.reference)
        return report
