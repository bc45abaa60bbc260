"""Alert rules: the file is checked with line numbers; rules fire, throttle and count."""

from __future__ import annotations

import textwrap

import pytest

from streamdl.alert_rules import DEFAULT_RULES_FILE, RulesError, load_rules, parse_rules
from streamdl.streams.pipelines.alerts import AlertEngine, Scored

RULES = textwrap.dedent("""\
    version: 1
    rules:
      - name: watch_sevens
        severity: warning
        class_in: ["7", 9]
        probability_at_least: 0.9
        throttle: 1m
      - name: anomaly
        severity: critical
        anomaly_score_at_least: 3
        subject: categorical.machine
        throttle: 10m
      - name: near_duplicate
        severity: warning
        finding: near_duplicate
      - name: dead_letters
        severity: warning
        dead_letter_rate_above: 0.1
        window: 1m
        min_messages: 10
    """)


def rules():
    return parse_rules(RULES, default_throttle_secs=300)


def test_the_shipped_rules_file_is_valid():
    names = [r.name for r in load_rules(DEFAULT_RULES_FILE, 300)]
    assert {"near_duplicate", "novel", "anomaly", "dead_letter_rate"} <= set(names)


def test_a_rules_file_parses_with_defaults():
    watch, anomaly, dup, dead = rules()
    assert watch.labels == {"7", "9"} and watch.threshold == 0.9 and watch.throttle_secs == 60 and watch.line == 3
    assert watch.streams == ("images", "events") and anomaly.streams == ("events",) and dup.streams == ("images",)
    assert anomaly.subject == "categorical.machine" and anomaly.threshold == 3.0 and dup.throttle_secs == 300
    assert dead.window_secs == 60 and dead.min_messages == 10


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("rules:\n  - name: a\n    severity: loud\n    finding: novel\n", 3, "severity"),
        ("rules:\n  - name: a\n    severity: info\n", 2, "exactly one condition"),
        (
            "rules:\n  - name: a\n    severity: info\n    finding: novel\n    class_in: [1]\n",
            2,
            "exactly one condition",
        ),
        ("rules:\n  - name: a\n    severity: info\n    finding: odd\n", 4, "finding"),
        ("rules:\n  - name: a\n    severity: info\n    finding: novel\n    throttle: soon\n", 5, "duration"),
        ("rules:\n  - name: a\n    severity: info\n    anomaly_score_at_least: -1\n", 4, "anomaly_score_at_least"),
        (
            "rules:\n  - name: a\n    severity: info\n    class_in: [1]\n    probability_at_least: 2\n",
            5,
            "probability_at_least",
        ),
        ("rules:\n  - name: a\n    severity: info\n    finding: novel\n    colour: red\n", 5, "unknown key 'colour'"),
        ("rules:\n  - name: a\n    severity: info\n    finding: novel\n    subject: numeric.x\n", 5, "subject"),
        (
            "rules:\n  - name: a\n    severity: info\n    finding: novel\n"
            "  - name: a\n    severity: info\n    finding: novel\n",
            5,
            "twice",
        ),
        ("rules:\n  - name: a b\n    severity: info\n    finding: novel\n", 2, "name"),
        ("rules:\n  - name: a\n    severity: info\n    finding: [novel\n", 5, "not valid YAML"),
        ("rulez: []\n", 1, "rules:"),
        ("version: 2\nrules: []\n", 1, "version"),
    ],
)
def test_a_bad_rules_file_fails_with_the_line_and_the_reason(text, line, words):
    with pytest.raises(RulesError) as info:
        parse_rules(text, 300, source="rules.yaml")
    assert f"rules.yaml line {line}:" in str(info.value) and words in str(info.value)


def test_a_missing_rules_file_names_the_setting(tmp_path):
    with pytest.raises(RulesError, match="STREAMDL_ALERT_RULES_FILE"):
        load_rules(tmp_path / "nope.yaml", 300)


def image(image_id: str, ts: float, label: str, p: float, **findings) -> Scored:
    return Scored(
        image_id, ts, "digits-cnn", "1", {"image_id": image_id}, [(label, p), ("0", 1 - p)], findings=findings
    )


def test_a_class_watch_rule_fires_once_per_window_and_counts_the_rest():
    engine = AlertEngine(rules(), "images", "t.images")
    first = engine.evaluate(
        [image("a", 1000.0, "7", 0.95), image("b", 1001.0, "7", 0.5), image("c", 1002.0, "3", 0.99)], now=5
    )
    assert [(a.rule, a.subject_id) for a in first.new] == [("watch_sevens", "a")]
    alert = first.new[0]
    assert alert.evidence == {"label": "7", "probability": 0.95, "threshold": 0.9, "watch": ["7", "9"]}
    assert alert.alert_id == "watch_sevens:a:960" and alert.kind == "class_in" and alert.model_version == "1"
    again = engine.evaluate([image("a", 1010.0, "7", 0.97), image("a", 1019.0, "7", 0.99)], now=6)
    assert not again.new and [a.suppressed for a in again.updated] == [1, 2]
    assert [a.suppressed for a in again.to_index] == [2] and again.to_index[0].alert_id == alert.alert_id
    later = engine.evaluate([image("a", 1021.0, "7", 0.97)], now=7)  # the next one-minute window
    assert [a.alert_id for a in later.new] == ["watch_sevens:a:1020"] and later.new[0].suppressed == 0


def test_findings_become_alerts_with_their_evidence():
    engine = AlertEngine(rules(), "images", "t.images")
    out = engine.evaluate([image("copy", 50.0, "1", 0.3, near_duplicate={"original": "orig", "similarity": 0.9999})])
    assert [(a.rule, a.subject_id, a.evidence["original"]) for a in out.new] == [("near_duplicate", "copy", "orig")]


def event(event_id: str, ts: float, machine: str, score: float) -> Scored:
    return Scored(event_id, ts, "sensors-ae", "1", {"id": event_id, "categorical": {"machine": machine}}, (), score)


def test_anomaly_rules_throttle_by_their_subject():
    engine = AlertEngine(rules(), "events", "t.events")
    out = engine.evaluate(
        [
            event("e1", 0, "m1", 5.0),
            event("e2", 60, "m1", 4.0),
            event("e3", 60, "m2", 3.0),
            event("e4", 120, "m3", 2.9),
            event("e5", 700, "m1", 9.0),
        ]
    )
    assert [(a.subject_id, a.evidence["score"]) for a in out.new] == [("m1", 5.0), ("m2", 3.0), ("m1", 9.0)]
    assert [a.subject_id for a in out.updated] == ["m1"]


def test_the_subject_falls_back_to_the_id_when_the_field_is_missing():
    engine = AlertEngine(rules(), "events", "t.events")
    scored = Scored("e9", 0, "m", "1", {"id": "e9", "categorical": {}}, (), 10.0)
    assert [a.subject_id for a in engine.evaluate([scored]).new] == ["e9"]


def test_the_dead_letter_rate_rule_needs_enough_messages_and_a_high_rate():
    engine = AlertEngine(rules(), "events", "t.events")
    assert not engine.observe(5, 5, now=0).new  # 5 messages: below min_messages
    out = engine.observe(5, 0, now=1)  # 10 messages, 5 dead
    assert [(a.rule, a.subject_id, a.evidence["rate"]) for a in out.new] == [("dead_letters", "t.events", 0.5)]
    assert not engine.observe(100, 0, now=200).new  # the bad batches left the window


def test_rules_apply_only_to_their_streams():
    engine = AlertEngine(rules(), "images", "t.images")
    assert not engine.evaluate([Scored("x", 0, "m", "1", {}, (), anomaly_score=99.0)]).new


def test_late_firings_count_in_their_own_window():
    engine = AlertEngine(rules(), "images", "t.images")
    out = engine.evaluate(
        [
            image("a", 1100.0, "7", 0.95),
            image("a", 1000.0, "7", 0.95),
            image("a", 1001.0, "7", 0.95),
            image("a", 1101.0, "7", 0.95),
        ]
    )
    assert [a.alert_id for a in out.new] == ["watch_sevens:a:1080", "watch_sevens:a:960"]
    assert {a.alert_id: a.suppressed for a in out.to_index} == {"watch_sevens:a:1080": 1, "watch_sevens:a:960": 1}
