"""Live quality, drift and rollback: the statistics, the label state transitions, the drift windows and the
rollback decision, without a broker (the integration tests run them against Kafka and Elasticsearch)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamdl.alert_rules import RulesError, parse_rules
from streamdl.models.registry import REFERENCE_TAG, Registry
from streamdl.records import Document
from streamdl.settings import load_settings
from streamdl.streams.pipelines.alerts import AlertEngine, Scored
from streamdl.streams.quality import feature_drift, stats
from streamdl.streams.quality.drift import DriftTracker, Sample
from streamdl.streams.quality.labels import Label, Limits, apply_label
from streamdl.streams.quality.reference import prediction_reference, registry_references
from streamdl.streams.quality.rollback import decide
from streamdl.streams.quality.sink import quality_windows
from streamdl.streams.quality.windows import reports

LIMITS = Limits(pending_ttl_secs=60, max_pending=10, max_labels_per_image=2, calibration_bins=10)
PREDICTION = {"model_name": "m", "model_version": "2", "label": "7", "score": 0.93, "processed_time": 100.0}


def settings(**overrides):
    return load_settings(overrides, env_file=None)


# --- statistics -------------------------------------------------------------------------------------
def test_precision_and_recall_per_class():
    precision, recall = stats.accuracy_by_class({("a", "a"): 8, ("a", "b"): 2, ("b", "b"): 5, ("c", "b"): 5})
    assert precision == {"a": 1.0, "b": 5 / 12}
    assert recall == {"a": 0.8, "b": 1.0, "c": 0.0}


def test_expected_calibration_error():
    assert stats.expected_calibration_error([]) is None
    assert stats.expected_calibration_error([(10, 0.9, 9)]) == pytest.approx(0.0)
    assert stats.expected_calibration_error([(10, 0.95, 5), (30, 0.5, 15)]) == pytest.approx(0.25 * 0.45)
    assert stats.confidence_bin(1.0, 10) == 9 and stats.confidence_bin(0.0, 10) == 0


def test_the_z_test_waits_for_labels_and_spends_its_level_over_looks():
    assert stats.worse_by_margin((5, 50), (95, 100), 0.05, 0.01, 100) is None
    bad = stats.worse_by_margin((10, 100), (95, 100), 0.05, 0.01, 100)
    assert bad.significant and bad.look == 1 and bad.alpha == pytest.approx(0.005)
    assert bad.critical == pytest.approx(2.5758, abs=1e-3)
    equal = stats.worse_by_margin((90, 100), (92, 100), 0.05, 0.01, 100)
    assert not equal.significant
    later = stats.worse_by_margin((700, 800), (760, 800), 0.05, 0.01, 100)
    assert later.look == 4 and later.alpha == pytest.approx(0.01 / 20)
    assert stats.worse_by_margin((10, 100), (95, 100), 0.05, 0.01, 100, after_look=1) is None  # taken already
    assert sum(0.01 / (k * (k + 1)) for k in range(1, 10_000)) < 0.01


def test_the_level_is_kept_under_the_null_over_many_looks():
    """Simulated equal versions, tested after every 25 labels up to 3,200: false rollbacks stay under alpha."""
    rng = np.random.default_rng(7)
    runs, false = 400, 0
    for _ in range(runs):
        a, b = rng.random(3200) < 0.9, rng.random(3200) < 0.9
        last = 0
        for n in range(100, 3201, 25):
            test = stats.worse_by_margin((int(a[:n].sum()), n), (int(b[:n].sum()), n), 0.0, 0.05, 100, last)
            if test is None:
                continue
            last = test.look
            if test.significant:
                false += 1
                break
    assert false / runs <= 0.05


def test_distribution_distances():
    same = np.array([10.0, 20, 30])
    assert stats.psi(same, same) == pytest.approx(0) and stats.jensen_shannon(same, same) == pytest.approx(0)
    assert stats.psi(same, np.array([30.0, 20, 10])) > 0.5
    assert stats.jensen_shannon(np.array([1.0, 0]), np.array([0.0, 1])) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    ref, again, moved = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 1.0
    assert stats.mmd(ref, moved) > 10 * stats.mmd(ref, again)


# --- the label state ------------------------------------------------------------------------------------
def test_a_label_joins_its_prediction():
    doc, outcome = apply_label(None, Label("e1", "img", "7", 130.0), PREDICTION, LIMITS, False)
    assert outcome == "joined"
    assert doc["status"] == "joined" and doc["correct"] == 1 and doc["model_version"] == "2"
    assert doc["delay_secs"] == pytest.approx(30.0) and doc["conf_bin"] == 9


def test_an_early_label_waits_and_a_full_wait_list_makes_it_an_orphan():
    doc, outcome = apply_label(None, Label("e1", "img", "7", 130.0), None, LIMITS, False)
    assert (outcome, doc["status"]) == ("pending", "pending")
    doc, outcome = apply_label(None, Label("e1", "img", "7", 130.0), None, LIMITS, True)
    assert (outcome, doc["status"], doc["orphan_reason"]) == ("orphan", "orphan", "pending_full")


def test_duplicates_contradictions_and_replays_are_counted_not_lost():
    first, _ = apply_label(None, Label("e1", "img", "7", 130.0), PREDICTION, LIMITS, False)
    assert apply_label(first, Label("e1", "img", "7", 131.0), None, LIMITS, False) == (None, "replay")
    dup, outcome = apply_label(first, Label("e2", "img", "7", 131.0), None, LIMITS, False)
    assert outcome == "duplicate" and dup["duplicates"] == 1 and dup["label"] == "7"
    both, outcome = apply_label(dup, Label("e3", "img", "1", 132.0), None, LIMITS, False)
    assert outcome == "contradiction" and both["contradictions"] == 1 and both["correct"] == 1
    assert apply_label(both, Label("e3", "img", "1", 133.0), None, LIMITS, False) == (None, "replay")
    full, _ = apply_label(both, Label("e4", "img", "1", 134.0), None, LIMITS, False)
    assert full["contradictions"] == 2 and len(full["other_labels"]) == LIMITS.max_labels_per_image


def test_reports_from_an_aggregation():
    response = {
        "aggregations": {
            "versions": {
                "buckets": [
                    {
                        "key": "2",
                        "doc_count": 4,
                        "name": {"buckets": [{"key": "m"}]},
                        "correct": {"value": 3.0},
                        "duplicates": {"value": 1.0},
                        "contradictions": {"value": 0.0},
                        "delay": {"values": {"50.0": 2.0, "95.0": 9.0}},
                        "truth": {
                            "buckets": [
                                {"key": "a", "predicted": {"buckets": [{"key": "a", "doc_count": 2}]}},
                                {
                                    "key": "b",
                                    "predicted": {
                                        "buckets": [{"key": "b", "doc_count": 1}, {"key": "a", "doc_count": 1}]
                                    },
                                },
                            ]
                        },
                        "bins": {"buckets": [{"doc_count": 4, "confidence": {"value": 0.9}, "correct": {"value": 3}}]},
                    }
                ]
            }
        }
    }
    (r,) = reports(response, "5m", 300)
    assert (r.model_version, r.labelled, r.correct, r.accuracy) == ("2", 4, 3, 0.75)
    assert r.precision == {"a": 2 / 3, "b": 1.0} and r.recall == {"a": 1.0, "b": 0.5}
    assert r.ece == pytest.approx(0.15) and r.delay_p95_secs == 9.0 and r.duplicates == 1


# --- drift ----------------------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def images(rng, n: int, classes: list[str], shift: float = 0.0) -> list[Document]:
    return [
        Document(
            f"i{k}",
            {
                "model_name": "m",
                "model_version": "1",
                "label": classes[k % len(classes)],
                "score": 0.95 - shift / 2,
                "embedding": rng.normal(size=8) + shift,
            },
        )
        for k in range(n)
    ]


def test_drift_windows_against_the_reference():
    clock, rng = Clock(), np.random.default_rng(1)
    tracker = DriftTracker(
        settings(drift_window_secs=10, drift_reference_size=100, drift_min_predictions=50, drift_reservoir_size=64),
        clock,
    )
    digits = [str(d) for d in range(10)]
    assert tracker.observe(images(rng, 100, digits)) == []  # the reference
    tracker.observe(images(rng, 100, digits))
    clock.now += 10
    (steady,) = tracker.observe(images(rng, 100, ["1", "7"], shift=1.0))  # closes the steady window
    assert steady.predictions == 100 and steady.class_psi < 0.05 and steady.confidence_psi < 0.05
    clock.now += 10
    (moved,) = tracker.close_windows(clock.now)
    assert moved.class_psi > 1.0 and moved.confidence_psi > 1.0 and moved.class_js > 0.3
    assert moved.embedding_mmd > 5 * steady.embedding_mmd
    clock.now += 10
    tracker.observe(images(rng, 10, digits))
    clock.now += 10
    assert tracker.close_windows(clock.now) == []  # too few predictions to judge


def test_the_drift_of_at_most_drift_max_versions_versions_is_tracked():
    """A new version beyond the bound forgets the one seen least recently, not the one serving."""
    rng = np.random.default_rng(3)
    tracker = DriftTracker(settings(drift_max_versions=2, drift_reference_size=20), Clock())

    def batch(version: str) -> list[Document]:
        docs = images(rng, 10, ["0", "1"])
        return [Document(d.id, {**d.body, "model_version": version}) for d in docs]

    tracker.observe(batch("1"))
    tracker.observe(batch("2"))
    tracker.observe(batch("1"))  # the champion again: now the most recent
    tracker.observe(batch("3"))  # a third version: 2 goes
    assert list(tracker.versions) == [("m", "1"), ("m", "3")]
    assert tracker.versions[("m", "1")].reference.n == 20  # kept its state: two batches of its reference


def test_a_saved_reference_is_used_from_the_first_prediction(tmp_path):
    """A version whose reference was saved in the registry is judged from its first window; one without falls
    back to its first predictions; the saved reference round-trips through JSON and the registry (MLflow,
    SQLite) and its reservoir is bounded by the setting."""
    clock, rng = Clock(), np.random.default_rng(2)
    digits = [str(d) for d in range(10)]
    n = 300
    probabilities = np.full((n, 10), 0.01)
    probabilities[np.arange(n), np.arange(n) % 10] = 0.91
    reference = prediction_reference(digits, probabilities, rng.normal(size=(n, 8)), capacity=64)
    assert reference["n"] == n and len(reference["reservoir"]) == 64
    assert np.allclose(np.linalg.norm(reference["reservoir"], axis=1), 1.0, atol=1e-5)  # unit rows
    assert reference["classes"] == {d: 30 for d in digits} and reference["confidence"][9] == n

    registry = Registry.from_settings(settings(state_dir=tmp_path))
    base = registry.ensure_base("m", {}, source=tmp_path.as_uri(), reference=lambda: reference)
    assert base.tags[REFERENCE_TAG].endswith("drift/reference.json")
    assert registry.reference("m", "1") == reference
    loaded = registry_references(settings(state_dir=tmp_path, drift_reservoir_size=32), registry)
    sample = loaded("m", "1")
    assert sample.n == n and len(sample.reservoir) == 32  # subsampled to the setting
    assert loaded("m", "9") is None  # not registered: the fallback

    with pytest.raises(ValueError, match="for 10 labels"):
        prediction_reference(digits, probabilities[:, :3], None, capacity=64)

    config = settings(drift_window_secs=10, drift_reference_size=100, drift_min_predictions=50)
    saved = {("m", "1"): Sample.from_json(reference, 64)}
    tracker = DriftTracker(config, clock, lambda name, version: saved.get((name, version)))
    tracker.observe(images(rng, 100, digits))  # version 1: its saved reference, no warm-up
    clock.now += 10
    (first,) = tracker.close_windows(clock.now)
    assert first.reference == "registry" and first.predictions == 100 and first.class_psi < 0.05
    fallback = [Document(d.id, {**d.body, "model_version": "2"}) for d in images(rng, 150, digits)]
    tracker.observe(fallback)  # version 2 has none: 100 make its reference, 50 its window
    clock.now += 10
    (second,) = [r for r in tracker.close_windows(clock.now) if r.model_version == "2"]
    assert second.reference == "first_predictions" and second.predictions == 50


# --- rules and rollback ---------------------------------------------------------------------------------
RULES = """
version: 1
rules:
  - name: drift
    severity: warning
    drift_above: 0.25
    signal: class_psi
  - name: accuracy
    severity: critical
    accuracy_below: 0.8
    window: 5m
    min_labels: 30
"""


def test_drift_and_accuracy_rules_fire_on_quality_findings():
    rules = parse_rules(RULES, 300)
    assert [(r.kind, r.signal, r.min_messages, r.streams) for r in rules] == [
        ("drift_above", "class_psi", 20, ("images",)),
        ("accuracy_below", "", 30, ("images",)),
    ]
    engine = AlertEngine(rules, "images", "t")
    quiet = Scored(id="m:2", ts=1.0, model_name="m", model_version="2", findings={"drift": {"class_psi": 0.1}})
    assert engine.evaluate([quiet], 1.0).new == []
    drifting = Scored(id="m:2", ts=2.0, model_name="m", model_version="2", findings={"drift": {"class_psi": 0.4}})
    (alert,) = engine.evaluate([drifting], 2.0).new
    assert alert.kind == "drift_above" and alert.evidence["value"] == 0.4 and alert.subject_id == "m:2"
    few = {300.0: {"accuracy": 0.5, "labelled": 10}}
    assert (
        engine.evaluate([Scored(id="m:2", ts=3, model_name="m", model_version="2", findings={"accuracy": few})]).new
        == []
    )
    low = {300.0: {"accuracy": 0.5, "labelled": 40}}
    (alert,) = engine.evaluate(
        [Scored(id="m:2", ts=4, model_name="m", model_version="2", findings={"accuracy": low})]
    ).new
    assert alert.kind == "accuracy_below" and alert.evidence["accuracy"] == 0.5


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("drift_above: 0.2\n    signal: colour", "'signal' must be one of"),
        ("drift_above: -1", "'drift_above' must be a number"),
        ("accuracy_below: 2", "'accuracy_below' must be a number between 0 and 1"),
        ("accuracy_below: 0.5\n    min_labels: 0", "'min_labels' must be a whole number"),
        ("accuracy_below: 0.5\n    signal: class_psi", "unknown key 'signal'"),
    ],
)
def test_bad_quality_rules_name_their_line_and_reason(text, says):
    with pytest.raises(RulesError, match=says):
        parse_rules(f"rules:\n  - name: r\n    severity: info\n    {text}\n", 300)


def test_the_quality_windows_include_the_accuracy_rules_windows():
    rules = parse_rules(RULES.replace("window: 5m", "window: 2m"), 300)
    assert quality_windows(settings(quality_windows="5m, 1h"), rules) == {"5m": 300.0, "1h": 3600.0, "120s": 120.0}


def test_rollback_needs_history_labels_and_significance():
    s = settings(rollback_margin=0.05, rollback_alpha=0.01, rollback_min_labels=100)
    good, bad = (950, 1000), (30, 150)
    assert decide("m", ["1"], {"1": good}, s) is None
    assert decide("m", ["1", "2"], {"1": good, "2": (10, 50)}, s) is None  # too few labels
    assert decide("m", ["1", "2"], {"1": good, "2": (930, 1000)}, s) is None  # within the margin
    looks: dict = {}
    decision = decide("m", ["1", "2"], {"1": good, "2": bad}, s, looks)
    assert (decision.champion, decision.previous) == ("2", "1") and looks == {("2", "1"): 1}
    assert decide("m", ["1", "2"], {"1": good, "2": (60, 199)}, s, looks) is None  # look 1 was taken
    evidence = decision.evidence(0.05)
    assert evidence["champion_accuracy"] == 0.2 and evidence["previous_accuracy"] == 0.95
    assert math.isfinite(evidence["z"]) and evidence["z"] > evidence["critical_z"]


class FlakyElasticsearch:
    """Refuses the first ``failures`` reads with a connection error, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def options(self, **_):
        return self

    def mget(self, **_):
        from elastic_transport import ConnectionError as Refused

        self.calls += 1
        if self.calls <= self.failures:
            raise Refused("connection refused")
        return {"docs": [{"_id": "a", "found": True, "_source": {"label": "1"}}]}


def test_label_state_reads_wait_out_an_outage_and_give_up_at_shutdown():
    from elastic_transport import ConnectionError as Refused

    from streamdl.streams.quality.labels import LabelJoin

    es = FlakyElasticsearch(failures=2)
    assert LabelJoin(es, settings())._states(["a"]) == {"a": {"label": "1"}} and es.calls == 3
    stopping = LabelJoin(FlakyElasticsearch(failures=100), settings(), should_stop=lambda: True)
    with pytest.raises(Refused):
        stopping._states(["a"])


def test_the_comparison_table_puts_versions_side_by_side():
    from streamdl.streams.quality.compare import comparison
    from streamdl.streams.quality.windows import QualityReport

    def report(version: str, window: str, n: int, correct: int) -> QualityReport:
        return QualityReport("m", version, window, 0, n, correct, correct / n, 0.05, delay_p95_secs=12.0)

    table = comparison(
        {"5m": [report("1", "5m", 40, 38)], "all": [report("1", "all", 300, 290), report("2", "all", 120, 13)]},
        {"2": {"class_psi": 1.75, "confidence_psi": 3.8, "embedding_mmd": None}},
        serving="1",
    )
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["version", "acc", "5m", "acc"]
    assert lines[1].split()[:5] == ["1", "*", "0.950", "(40)", "0.967"]
    assert lines[2].split() == ["2", "-", "0.108", "(120)", "0.050", "12.0s", "1.750", "3.800", "-"]
    assert "no live quality yet" in comparison({"all": []}, {}, None)


# --- per-feature drift of the event stream -------------------------------------------------------------
def events(rng, n: int, shift: float = 0.0, sites: int = 5, version: str = "1") -> list[Document]:
    """Scored event documents: numeric ``temp`` (normal), ``load`` (sometimes missing), categorical ``site``."""
    return [
        Document(
            f"e{k}",
            {
                "type": "reading",
                "model_name": "machines",
                "model_version": version,
                "numeric": {
                    "temp": float(rng.normal(20 + shift, 2)),
                    **({"load": float(rng.random())} if k % 4 else {}),
                },
                "categorical": {"site": f"s{int(rng.integers(sites))}"},
                "anomaly_score": float(rng.gamma(2.0, 0.5 + shift)),
            },
        )
        for k in range(n)
    ]


def test_feature_drift_per_numeric_and_categorical_feature_and_the_anomaly_score():
    clock, rng = Clock(), np.random.default_rng(4)
    rows = [feature_drift.row_of(d.body) for d in events(rng, 2000, sites=12)]
    reference = feature_drift.fit_reference(rows, max_features=2, top_categories=3)
    # two features tracked: the most present (temp, site in every event; load in 3 of 4)
    assert set(reference.signals()) == {"feature_psi:temp", "feature_psi:site", "anomaly_psi"}
    assert len(reference.numeric["temp"]) == feature_drift.FEATURE_BINS - 1
    assert (
        len(reference.categorical["site"]) == 3 and len(reference.counts["feature_psi:site"]) == 5
    )  # + other, missing
    saved = feature_drift.FeatureReference.from_json(json.loads(json.dumps(reference.as_json())), max_features=2)
    assert saved == reference

    config = settings(drift_window_secs=10, drift_reference_size=200, drift_min_predictions=100)
    tracker = feature_drift.FeatureDriftTracker(config, clock, lambda name, version: saved if version == "1" else None)
    tracker.observe(events(rng, 500, sites=12) + [Document("l", {"type": "label", "image_id": "x", "label": "1"})])
    clock.now += 10
    (steady,) = tracker.close_windows(clock.now)
    assert steady.reference == "registry" and steady.predictions == 500
    assert max(steady.signals().values()) < 0.05, steady.signals()
    tracker.observe(events(rng, 500, shift=3.0, sites=12))
    clock.now += 10
    (moved,) = tracker.close_windows(clock.now)
    assert moved.psi["feature_psi:temp"] > 1 and moved.psi["anomaly_psi"] > 0.25
    assert moved.psi["feature_psi:site"] < 0.05  # the sites did not change
    tracker.observe(events(rng, 500, sites=40))  # mostly sites the reference never saw: the 'other' bin
    clock.now += 10
    (sites,) = tracker.close_windows(clock.now)
    assert sites.psi["feature_psi:site"] > 0.25 and sites.psi["feature_psi:temp"] < 0.05
    doc = sites.as_json()
    assert (
        doc["kind"] == "feature_drift" and doc["max_feature"] == "site" and set(doc["feature_psi"]) == {"temp", "site"}
    )

    tracker.observe(events(rng, 300, version="2"))  # no saved reference: its first 200 events make it
    clock.now += 10
    (fallback,) = [r for r in tracker.close_windows(clock.now) if r.model_version == "2"]
    assert fallback.reference == "first_predictions" and fallback.predictions == 100
    assert "feature_psi:load" in fallback.signals()  # the fallback tracks up to drift_max_features (32)


def test_event_drift_rules_name_a_feature_and_watch_the_events():
    (rule,) = parse_rules(
        "version: 1\nrules:\n  - name: temp_drift\n    severity: warning\n    drift_above: 0.25\n"
        "    signal: feature_psi:temp\n",
        60,
    )
    assert rule.signal == "feature_psi:temp" and rule.streams == ("events",)
    engine = AlertEngine([rule], "events", "events")
    quiet = {"drift": {"feature_psi:temp": 0.1, "feature_psi:site": 0.9}}
    assert engine.evaluate([Scored(id="m:1", ts=1.0, model_name="m", model_version="1", findings=quiet)], 1.0).new == []
    moved = {"drift": {"feature_psi:temp": 0.6}}
    (alert,) = engine.evaluate([Scored(id="m:1", ts=2.0, model_name="m", model_version="1", findings=moved)], 2.0).new
    assert alert.kind == "drift_above" and alert.evidence["value"] == 0.6
    assert AlertEngine([rule], "images", "images").rules == []
