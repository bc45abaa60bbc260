"""Alert rules: a YAML file, checked at start (a bad file fails with its line and the reason).

The file::

    version: 1
    rules:
      - name: watch_sevens              # [A-Za-z0-9_.-], unique
        severity: warning               # info | warning | critical
        class_in: ["7"]                 # condition: a watched class ...
        probability_at_least: 0.9       # ... at or above this probability (default 0.5)
      - name: sensor_anomaly
        severity: critical
        anomaly_score_at_least: 3.0     # condition: an event model's anomaly score
        subject: categorical.machine    # what throttling groups by (default: id)
        throttle: 10m                   # default: the setting alert_throttle_secs
      - name: near_duplicate
        severity: warning
        finding: near_duplicate         # condition: the image stream's near_duplicate or novel
      - name: dead_letters
        severity: warning
        dead_letter_rate_above: 0.05    # condition: dead letters / messages over a sliding window
        window: 5m                      # (default 5m)
        min_messages: 50                # no judgement on fewer messages (default 20)
      - name: prediction_drift
        severity: warning
        drift_above: 0.25               # condition: a model version's drift in a closed drift window
        signal: class_psi               # class_psi (default), class_js, confidence_psi or embedding_mmd (images);
                                        # feature_psi:<feature> or anomaly_psi (event models, per feature)
      - name: live_accuracy
        severity: critical
        accuracy_below: 0.8             # condition: live accuracy from late labels ...
        window: 1h                      # ... over this quality window (default 5m)
        min_labels: 50                  # no judgement on fewer labels (default 20)

Each rule has exactly one condition. ``streams`` (``[images]``, ``[events]`` or both) limits
where it applies; by default class and dead-letter rules watch both streams, anomaly rules the
events and findings the images; drift and accuracy rules judge model versions (subject: the
version, ``name:version``), reported by the quality sink (:mod:`streamdl.streams.quality`): a drift rule
watches the images, or the events when its signal is an event model's (``feature_psi:...``, ``anomaly_psi``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from streamdl.errors import SettingsError
from streamdl.times import parse_duration

SEVERITIES = ("info", "warning", "critical")
FINDINGS = ("near_duplicate", "novel")
DRIFT_SIGNALS = ("class_psi", "class_js", "confidence_psi", "embedding_mmd")
EVENT_DRIFT_SIGNALS = ("feature_psi:<feature>", "anomaly_psi")
"""The drift signals of event model versions (:mod:`streamdl.streams.quality.feature_drift`)."""
_FEATURE_SIGNAL = re.compile(r"^feature_psi:[^\s]{1,200}$")


def is_event_signal(signal: str) -> bool:
    """Whether a drift signal is an event model's (one feature's PSI, or the anomaly score's)."""
    return signal == "anomaly_psi" or bool(_FEATURE_SIGNAL.match(signal))


STREAMS = ("images", "events")
DEFAULT_RULES_FILE = Path(__file__).with_name("default_alert_rules.yaml")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_SUBJECT = re.compile(r"^(id|image_id|type|label|source|categorical\.[^.\s]+)$")

_CONDITIONS = {
    "class_in": ("probability_at_least",),
    "anomaly_score_at_least": (),
    "finding": (),
    "dead_letter_rate_above": ("window", "min_messages"),
    "drift_above": ("signal",),
    "accuracy_below": ("window", "min_labels"),
}
_DEFAULT_STREAMS = {
    "class_in": STREAMS,
    "anomaly_score_at_least": ("events",),
    "finding": ("images",),
    "dead_letter_rate_above": STREAMS,
    "drift_above": ("images",),
    "accuracy_below": ("images",),
}
_COMMON = ("name", "severity", "subject", "throttle", "streams")


class RulesError(SettingsError):
    """The rules file is not valid; the message names the file, the line and the reason."""


@dataclass(frozen=True)
class Rule:
    """One alert rule."""

    name: str
    severity: str
    kind: str
    """The condition: ``class_in``, ``anomaly_score_at_least``, ``finding``, ``dead_letter_rate_above``,
    ``drift_above`` or ``accuracy_below``."""
    streams: tuple[str, ...]
    throttle_secs: float
    subject: str = "id"
    labels: frozenset[str] = frozenset()
    threshold: float = 0.0
    """The probability, score or rate bound of the condition."""
    finding: str = ""
    window_secs: float = 300.0
    min_messages: int = 20
    """Messages (``dead_letter_rate_above``) or labels (``accuracy_below``, key ``min_labels``) needed to judge."""
    signal: str = ""
    """The drift signal of a ``drift_above`` rule."""
    line: int = 0

    def applies_to(self, stream: str) -> bool:
        return stream in self.streams


class _LineLoader(yaml.SafeLoader):
    """Keeps the line of every mapping (``__line__``) and of each of its keys (``__lines__``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=True)
        mapping["__lines__"] = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        mapping["__line__"] = node.start_mark.line + 1
        return mapping


def load_rules(path: Path | None, default_throttle_secs: float) -> tuple[Rule, ...]:
    """The rules of ``path`` (``None``: the rules shipped with the product); :class:`RulesError` when invalid."""
    path = Path(path) if path is not None else DEFAULT_RULES_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(
            f"alert rules file {path}: cannot read it: {exc.strerror or exc} (setting alert_rules_file, "
            "STREAMDL_ALERT_RULES_FILE)"
        ) from None
    return parse_rules(text, default_throttle_secs, source=str(path))


def parse_rules(text: str, default_throttle_secs: float, source: str = "<rules>") -> tuple[Rule, ...]:
    """Parse the YAML ``text`` of a rules file; see the module docstring for its shape."""
    try:
        doc = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RulesError(f"{source}{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None

    def fail(line: int, message: str) -> RulesError:
        return RulesError(f"{source} line {line}: {message}")

    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise fail(doc.get("__line__", 1) if isinstance(doc, dict) else 1, "expected a mapping with a 'rules:' list")
    unknown = set(doc) - {"version", "rules", "__line__", "__lines__"}
    if unknown:
        raise fail(
            doc["__lines__"].get(sorted(unknown)[0], 1),
            f"unknown top-level key(s) {', '.join(sorted(unknown))}; expected version, rules",
        )
    if doc.get("version", 1) != 1:
        raise fail(doc["__lines__"].get("version", 1), f"version {doc.get('version')!r} is not supported (1 is)")
    rules: list[Rule] = []
    errors: list[RulesError] = []  # every rule is checked: one error per bad rule, all reported at once
    for item in doc["rules"]:
        try:
            if not isinstance(item, dict):
                raise fail(doc["__lines__"]["rules"], f"each rule is a mapping of keys, got {item!r}")
            rule = _rule(item, default_throttle_secs, fail)
            if any(r.name == rule.name for r in rules):
                raise fail(rule.line, f"rule name {rule.name!r} is used twice")
        except RulesError as exc:
            errors.append(exc)
            continue
        rules.append(rule)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise RulesError(f"{len(errors)} rules are not valid:\n  " + "\n  ".join(str(e) for e in errors))
    return tuple(rules)


def _rule(item: dict[str, Any], default_throttle: float, fail) -> Rule:
    line, lines = item["__line__"], item["__lines__"]
    fields = {k: v for k, v in item.items() if k not in ("__line__", "__lines__")}

    def at(key: str) -> int:
        return lines.get(key, line)

    name = fields.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(at("name"), f"every rule needs a 'name' of [A-Za-z0-9_.-] (1-64 characters), got {name!r}")
    where = f"rule {name!r}: "
    conditions = [k for k in fields if k in _CONDITIONS]
    if len(conditions) != 1:
        raise fail(
            line,
            where + f"needs exactly one condition of {', '.join(_CONDITIONS)}; found {', '.join(conditions) or 'none'}",
        )
    kind = conditions[0]
    allowed = set(_COMMON) | {kind, *_CONDITIONS[kind]}
    for key in fields:
        if key not in allowed:
            raise fail(at(key), where + f"unknown key {key!r} for a {kind} rule; allowed: {', '.join(sorted(allowed))}")
    severity = fields.get("severity")
    if severity not in SEVERITIES:
        raise fail(at("severity"), where + f"'severity' must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    subject = fields.get("subject", "id")
    if not isinstance(subject, str) or not _SUBJECT.match(subject):
        raise fail(
            at("subject"),
            where + f"'subject' must be id, image_id, type, label, source or categorical.NAME, got {subject!r}",
        )
    streams = fields.get("streams", list(_DEFAULT_STREAMS[kind]))
    if isinstance(streams, str):
        streams = [streams]
    if not isinstance(streams, list) or not streams or any(s not in STREAMS for s in streams):
        raise fail(at("streams"), where + f"'streams' must list images and/or events, got {fields.get('streams')!r}")
    try:
        throttle = parse_duration(fields.get("throttle", default_throttle))
        window = parse_duration(fields.get("window", "5m"))
    except ValueError as exc:
        raise fail(at("throttle" if "throttle" in fields else "window"), where + str(exc)) from None
    rule: dict[str, Any] = dict(
        name=name,
        severity=severity,
        kind=kind,
        streams=tuple(streams),
        throttle_secs=throttle,
        subject=subject,
        window_secs=window,
        line=line,
    )
    value = fields[kind]
    if kind == "class_in":
        labels = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
        if (
            not isinstance(labels, list)
            or not labels
            or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in labels)
        ):
            raise fail(at(kind), where + f"'class_in' must be a class name or a list of them, got {value!r}")
        rule.update(
            labels=frozenset(str(v) for v in labels),
            threshold=_number(fields.get("probability_at_least", 0.5), 0, 1, "probability_at_least", where, at, fail),
        )
    elif kind == "anomaly_score_at_least":
        rule["threshold"] = _number(value, 0, float("inf"), kind, where, at, fail)
    elif kind == "finding":
        if value not in FINDINGS:
            raise fail(at(kind), where + f"'finding' must be one of {', '.join(FINDINGS)}, got {value!r}")
        rule["finding"] = value
    elif kind == "drift_above":
        rule["threshold"] = _number(value, 0, float("inf"), kind, where, at, fail)
        signal = fields.get("signal", "class_psi")
        if not isinstance(signal, str) or not (signal in DRIFT_SIGNALS or is_event_signal(signal)):
            signals = ", ".join((*DRIFT_SIGNALS, *EVENT_DRIFT_SIGNALS))
            raise fail(at("signal"), where + f"'signal' must be one of {signals}, got {signal!r}")
        rule["signal"] = signal
        if "streams" not in fields and is_event_signal(signal):
            rule["streams"] = ("events",)
    else:
        rule["threshold"] = _number(value, 0, 1, kind, where, at, fail)
        key = "min_labels" if kind == "accuracy_below" else "min_messages"
        minimum = fields.get(key, 20)
        if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 1:
            raise fail(at(key), where + f"'{key}' must be a whole number >= 1, got {minimum!r}")
        rule["min_messages"] = minimum
    return Rule(**rule)


def _number(value: Any, low: float, high: float, key: str, where: str, at, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        bounds = f"between {low:g} and {high:g}" if high != float("inf") else f"at least {low:g}"
        raise fail(at(key), where + f"{key!r} must be a number {bounds}, got {value!r}")
    return float(value)
