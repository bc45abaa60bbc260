"""Turn event records into model inputs: the preprocessing fitted on training data and saved with a model.

A record is an :class:`EventRecord` (time, numeric and categorical features). :class:`EventFeatures`
lays out one float32 row per record, in this column order:

* ``num:<name>``: each numeric feature seen in training, standardised with the training mean and
  standard deviation (a constant feature keeps scale 1); a missing value (``None``, absent, not
  finite) becomes 0;
* ``missing:<name>``: 1.0 where that numeric feature is missing, else 0.0 (for every numeric feature);
* ``cat:<name>=<value>``: one-hot per categorical feature over the values seen at least
  ``min_count`` times in training, plus ``cat:<name>=<unknown>`` for any other value (never an
  error); a missing categorical value sets no column of its block;
* ``time:hour_sin``, ``time:hour_cos``: the UTC time of day on the unit circle (``time_of_day=True``).

Features not seen in training are ignored. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamdl.times import to_epoch

FORMAT = 1
UNKNOWN = "<unknown>"
MIN_COUNT = 2
MAX_CATEGORIES = 64


@dataclass(frozen=True)
class EventRecord:
    """What a model sees of one event."""

    ts: float
    """Seconds since the epoch (UTC)."""
    numeric: Mapping[str, float | None] = field(default_factory=dict)
    categorical: Mapping[str, str | None] = field(default_factory=dict)

    @classmethod
    def of(cls, value: Any) -> EventRecord:
        """A record from an :class:`EventRecord`, a ``(ts, numeric, categorical)`` tuple, an object with
        those attributes (such as a parsed event), or an event's JSON dict (``ts`` ISO-8601 or epoch)."""
        if isinstance(value, EventRecord):
            return value
        if isinstance(value, Mapping):
            return cls(to_epoch(value["ts"]), value.get("numeric") or {}, value.get("categorical") or {})
        if isinstance(value, tuple) and len(value) == 3:
            ts, numeric, categorical = value
            return cls(to_epoch(ts), numeric or {}, categorical or {})
        try:
            return cls(to_epoch(value.ts), value.numeric or {}, value.categorical or {})
        except AttributeError:
            raise TypeError(
                "a record is an EventRecord, a (ts, numeric, categorical) tuple, an event or its JSON dict. "
                f"Received: {type(value).__name__}"
            ) from None


class EventFeatures:
    """Standardise, one-hot and encode records; fit once on training records, then transform any."""

    def __init__(
        self, *, min_count: int = MIN_COUNT, max_categories: int = MAX_CATEGORIES, time_of_day: bool = True
    ) -> None:
        if min_count < 1 or max_categories < 1:
            raise ValueError(
                f"min_count and max_categories must be at least 1. Received: {min_count}, {max_categories}"
            )
        self.min_count = int(min_count)
        self.max_categories = int(max_categories)
        self.time_of_day = bool(time_of_day)
        self.numeric: list[str] = []
        self.mean = np.zeros(0, np.float64)
        self.scale = np.ones(0, np.float64)
        self.categories: dict[str, list[str]] = {}
        """Per categorical feature, its known values in column order (``UNKNOWN`` follows them)."""
        self.fitted = False

    # --- Fit and transform ----------------------------------------------------------------------
    def fit(self, records: Iterable[Any]) -> EventFeatures:
        """Learn names, means, standard deviations and vocabularies from ``records``; returns ``self``."""
        rows = [EventRecord.of(r) for r in records]
        if not rows:
            raise ValueError("cannot fit features on no records")
        self.numeric = sorted({name for r in rows for name in r.numeric})
        values = self._numeric_matrix(rows)
        present = ~np.isnan(values)
        counts = present.sum(axis=0)
        sums = np.where(present, values, 0.0).sum(axis=0)
        self.mean = np.divide(sums, counts, out=np.zeros(len(self.numeric)), where=counts > 0)
        squares = np.where(present, (values - self.mean) ** 2, 0.0).sum(axis=0)
        std = np.sqrt(np.divide(squares, counts, out=np.zeros(len(self.numeric)), where=counts > 0))
        self.scale = np.where(std > 1e-12, std, 1.0)
        seen: dict[str, Counter[str]] = {}
        for r in rows:
            for name, value in r.categorical.items():
                counter = seen.setdefault(name, Counter())
                if value is not None:
                    counter[str(value)] += 1
        self.categories = {}
        for name in sorted(seen):
            frequent = [v for v, c in seen[name].items() if c >= self.min_count]
            frequent.sort(key=lambda v: (-seen[name][v], v))
            self.categories[name] = sorted(frequent[: self.max_categories])
        self.fitted = True
        return self

    def transform(self, records: Iterable[Any]) -> np.ndarray:
        """``(n, len(feature_names))`` float32 rows of ``records``."""
        self._check_fitted()
        rows = [EventRecord.of(r) for r in records]
        k = len(self.numeric)
        out = np.zeros((len(rows), len(self.feature_names)), np.float32)
        values = self._numeric_matrix(rows)
        missing = np.isnan(values)
        out[:, :k] = np.where(missing, 0.0, (values - self.mean) / self.scale)
        out[:, k : 2 * k] = missing
        column = 2 * k
        for name, known in self.categories.items():
            index = {value: j for j, value in enumerate(known)}
            for i, r in enumerate(rows):
                value = r.categorical.get(name)
                if value is not None:
                    out[i, column + index.get(str(value), len(known))] = 1.0
            column += len(known) + 1
        if self.time_of_day:
            angle = np.array([r.ts % 86400 for r in rows], np.float64) * (2 * math.pi / 86400)
            out[:, column] = np.sin(angle)
            out[:, column + 1] = np.cos(angle)
        return out

    def fit_transform(self, records: Iterable[Any]) -> np.ndarray:
        rows = [EventRecord.of(r) for r in records]
        return self.fit(rows).transform(rows)

    # --- Layout -----------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        """The column names, in order (see the module docstring)."""
        self._check_fitted()
        names = [f"num:{n}" for n in self.numeric] + [f"missing:{n}" for n in self.numeric]
        for name, known in self.categories.items():
            names += [f"cat:{name}={value}" for value in known] + [f"cat:{name}={UNKNOWN}"]
        if self.time_of_day:
            names += ["time:hour_sin", "time:hour_cos"]
        return names

    @property
    def numeric_columns(self) -> slice:
        """The standardised numeric values."""
        return slice(0, len(self.numeric))

    @property
    def missing_columns(self) -> slice:
        """The missing indicators, in the order of :attr:`numeric_columns`."""
        return slice(len(self.numeric), 2 * len(self.numeric))

    @property
    def context_columns(self) -> slice:
        """The categorical and time-of-day columns (everything after the indicators)."""
        return slice(2 * len(self.numeric), len(self.feature_names))

    # --- Saving -----------------------------------------------------------------------------------
    def to_json(self) -> str:
        """Everything :meth:`from_json` needs, as JSON text."""
        self._check_fitted()
        return json.dumps(
            {
                "format": FORMAT,
                "min_count": self.min_count,
                "max_categories": self.max_categories,
                "time_of_day": self.time_of_day,
                "numeric": {
                    name: {"mean": float(m), "scale": float(s)}
                    for name, m, s in zip(self.numeric, self.mean, self.scale)
                },
                "categorical": self.categories,
                "feature_names": self.feature_names,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> EventFeatures:
        """The features saved by :meth:`to_json`; ``ValueError`` when the text is not such a save."""
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"unsupported features format {data.get('format')!r} (this version reads {FORMAT})")
            out = cls(
                min_count=data["min_count"], max_categories=data["max_categories"], time_of_day=data["time_of_day"]
            )
            out.numeric = list(data["numeric"])
            out.mean = np.array([data["numeric"][n]["mean"] for n in out.numeric], np.float64)
            out.scale = np.array([data["numeric"][n]["scale"] for n in out.numeric], np.float64)
            out.categories = {name: [str(v) for v in values] for name, values in data["categorical"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a saved EventFeatures: {type(exc).__name__}: {exc}") from None
        out.fitted = True
        if data.get("feature_names") not in (None, out.feature_names):
            raise ValueError("saved feature names do not match the saved layout")
        return out

    # --- Helpers ----------------------------------------------------------------------------------
    def _numeric_matrix(self, rows: Sequence[EventRecord]) -> np.ndarray:
        """``(n, k)`` float64 raw values, NaN where missing or not a finite number."""
        names = self.numeric
        try:  # one conversion for the whole batch: numbers and null, as validated events hold
            out = np.array(
                [[math.nan if (v := r.numeric.get(name)) is None else v for name in names] for r in rows],
                dtype=np.float64,
            ).reshape(len(rows), len(names))
        except (TypeError, ValueError, OverflowError):  # text or huge values: value by value, as _finite reads them
            out = np.full((len(rows), len(names)), np.nan)
            for j, name in enumerate(names):
                for i, r in enumerate(rows):
                    value = r.numeric.get(name)
                    if value is not None:
                        out[i, j] = _finite(value)
            return out
        out[~np.isfinite(out)] = np.nan
        return out

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("call fit() before using the features")


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return number if math.isfinite(number) else math.nan
