"""From scored messages to alerts: the rules are applied, then throttled.

Throttling uses tumbling windows of *event time*: the same rule on the same subject raises
one alert per window (its first firing) and counts the rest in ``suppressed``. The alert's id
is ``rule:subject:window-start``, so a batch replayed after a crash rewrites the same alert
instead of adding one. Dead-letter rates are judged on processing time over a sliding window.

The throttle state here is per worker and in memory; across workers and restarts the alerts
index decides (:class:`~streamdl.streams.pipelines.sinks.ElasticsearchAlerts` creates each
alert id only once: the first worker to write it publishes it, the others count it suppressed).
"""

from __future__ import annotations

import math
import time
from collections import ChainMap, deque
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from streamdl.alert_rules import Rule
from streamdl.records import iso


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One alert: which rule fired on which subject, with its evidence."""

    rule: str
    kind: str
    severity: str
    subject_id: str
    model_name: str
    model_version: str
    evidence: dict[str, Any]
    ts: float
    """Event time of the first firing in the window."""
    window_start: float
    raised_at: float
    """Processing time of the first firing."""
    suppressed: int = 0
    """Further firings of the same rule on the same subject in the window."""
    trigger: str = ""
    """Id of the document whose firing raised the alert (``""`` for rate alerts): a replay of that
    document raises it again, any other firing of the window only counts as suppressed."""

    @property
    def alert_id(self) -> str:
        """Deterministic, so a replayed batch rewrites its alert instead of adding one."""
        return f"{self.rule}:{self.subject_id}:{int(self.window_start)}"

    def as_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "kind": self.kind,
            "severity": self.severity,
            "subject_id": self.subject_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "evidence": self.evidence,
            "suppressed": self.suppressed,
            "trigger": self.trigger,
            "ts": iso(self.ts),
            "window_start": iso(self.window_start),
            "raised_at": iso(self.raised_at),
        }


@dataclass
class Scored:
    """One message after its model: what the rules look at."""

    id: str
    ts: float
    """Event time (seconds): the event's ``ts``, an image message's timestamp."""
    model_name: str
    model_version: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    """The indexed document: subjects such as ``categorical.machine`` are read from it."""
    top_k: Sequence[tuple[str, float]] = ()
    anomaly_score: float | None = None
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``near_duplicate`` / ``novel`` evidence from the neighbour lookup."""

    def subject(self, path: str) -> str:
        """The value of ``path`` in the document, or the id when it has none."""
        value: Any = self.fields
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        return self.id if value is None or path == "id" else str(value)


@dataclass
class AlertBatch:
    """A micro-batch's alerts: ``new`` ones are published and indexed; ``updated`` ones (a new
    suppressed count) only re-indexed."""

    new: list[Alert] = field(default_factory=list)
    updated: list[Alert] = field(default_factory=list)

    def extend(self, other: AlertBatch) -> None:
        self.new += other.new
        self.updated += other.updated

    @property
    def to_index(self) -> list[Alert]:
        """One document per alert id, the latest count winning."""
        return list({a.alert_id: a for a in [*self.new, *self.updated]}.values())


WindowKey = tuple[str, str, float]
"""A throttle window: the rule's name, the subject, the window's start."""


@dataclass
class Tentative:
    """An evaluation not yet applied to the throttle state (:meth:`AlertEngine.tentative`)."""

    alerts: AlertBatch
    windows: dict[WindowKey, Alert]
    """The windows it opens or counts in, with their alert after this batch."""


class AlertEngine:
    """The rules of one stream (``images`` or ``events``) with their throttle state."""

    MAX_OPEN_WINDOWS = 100_000

    def __init__(self, rules: Sequence[Rule], stream: str, topic: str) -> None:
        self.rules = [r for r in rules if r.applies_to(stream)]
        self.stream, self.topic = stream, topic
        self._open: dict[WindowKey, Alert] = {}
        self._counts: deque[tuple[float, int, int]] = deque()

    def evaluate(self, scored: Sequence[Scored], now: float | None = None) -> AlertBatch:
        """Alerts for a batch of scored messages."""
        tentative = self.tentative(scored, time.time() if now is None else now)
        self.keep(tentative)
        return tentative.alerts

    def tentative(self, scored: Sequence[Scored], now: float) -> Tentative:
        """What :meth:`evaluate` would return, without changing the throttle state: :meth:`keep` it (no other
        evaluation in between) or drop it."""
        windows: ChainMap[WindowKey, Alert] = ChainMap({}, self._open)
        out = AlertBatch()
        for item in scored:
            for rule in self.rules:
                evidence = _evidence(rule, item)
                if evidence is not None:
                    self._fire(
                        windows,
                        out,
                        rule,
                        item.subject(rule.subject),
                        item.ts,
                        now,
                        evidence,
                        item.model_name,
                        item.model_version,
                        item.id,
                    )
        return Tentative(out, windows.maps[0])

    def keep(self, tentative: Tentative) -> None:
        """Apply a :meth:`tentative` evaluation's windows to the throttle state."""
        self._open.update(tentative.windows)
        if len(self._open) > self.MAX_OPEN_WINDOWS:
            self._forget_oldest()

    def observe(self, messages: int, dead: int, now: float | None = None) -> AlertBatch:
        """Count a batch's messages and dead letters; alerts for rates above their bound."""
        now = time.time() if now is None else now
        self._counts.append((now, messages, dead))
        out = AlertBatch()
        longest = max((r.window_secs for r in self.rules if r.kind == "dead_letter_rate_above"), default=0.0)
        while self._counts and self._counts[0][0] < now - longest:
            self._counts.popleft()
        for rule in self.rules:
            if rule.kind != "dead_letter_rate_above":
                continue
            total = sum(n for t, n, _ in self._counts if t >= now - rule.window_secs)
            bad = sum(d for t, _, d in self._counts if t >= now - rule.window_secs)
            if total >= rule.min_messages and bad / total > rule.threshold:
                evidence = {
                    "rate": round(bad / total, 6),
                    "threshold": rule.threshold,
                    "dead_letters": bad,
                    "messages": total,
                    "window_secs": rule.window_secs,
                    "topic": self.topic,
                }
                self._fire(self._open, out, rule, self.topic, now, now, evidence, "", "")
        if len(self._open) > self.MAX_OPEN_WINDOWS:
            self._forget_oldest()
        return out

    @staticmethod
    def _fire(
        windows: MutableMapping[WindowKey, Alert],
        out: AlertBatch,
        rule: Rule,
        subject: str,
        ts: float,
        now: float,
        evidence: dict[str, Any],
        model_name: str,
        model_version: str,
        trigger: str = "",
    ) -> None:
        window = math.floor(ts / rule.throttle_secs) * rule.throttle_secs
        key = (rule.name, subject, window)
        open_alert = windows.get(key)
        if open_alert is not None:
            windows[key] = updated = replace(open_alert, suppressed=open_alert.suppressed + 1)
            out.updated.append(updated)
            return
        windows[key] = alert = Alert(
            rule=rule.name,
            kind=rule.finding or rule.kind,
            severity=rule.severity,
            subject_id=subject,
            model_name=model_name,
            model_version=model_version,
            evidence=evidence,
            ts=ts,
            window_start=window,
            raised_at=now,
            trigger=trigger,
        )
        out.new.append(alert)

    def _forget_oldest(self) -> None:
        """Drop the older half of the open windows (bounded memory under many subjects). A late
        firing in a dropped window raises its alert again, under the same id."""
        keep = sorted(self._open.items(), key=lambda kv: kv[1].window_start)[len(self._open) // 2 :]
        self._open = dict(keep)


def _evidence(rule: Rule, item: Scored) -> dict[str, Any] | None:
    """The evidence when ``rule`` fires on ``item``, else ``None``."""
    if rule.kind == "class_in":
        for label, probability in item.top_k:
            if label in rule.labels and probability >= rule.threshold:
                return {
                    "label": label,
                    "probability": round(probability, 6),
                    "threshold": rule.threshold,
                    "watch": sorted(rule.labels),
                }
    elif rule.kind == "anomaly_score_at_least":
        if item.anomaly_score is not None and item.anomaly_score >= rule.threshold:
            return {"score": round(item.anomaly_score, 6), "threshold": rule.threshold}
    elif rule.kind == "finding":
        return item.findings.get(rule.finding)
    elif rule.kind == "drift_above":  # a model version's closed drift window (streamdl.streams.quality)
        drift = item.findings.get("drift") or {}
        value = drift.get(rule.signal)
        if value is not None and value > rule.threshold:
            return {**drift, "signal": rule.signal, "value": round(value, 6), "threshold": rule.threshold}
    elif rule.kind == "accuracy_below":  # a model version's live accuracy over the rule's window
        live = (item.findings.get("accuracy") or {}).get(rule.window_secs)
        if live and live["labelled"] >= rule.min_messages and live["accuracy"] < rule.threshold:
            return {**live, "threshold": rule.threshold, "min_labels": rule.min_messages}
    return None
