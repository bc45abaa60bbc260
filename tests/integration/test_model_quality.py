"""Model quality in production, end to end on the real local stack: a real worker (images and events agents),
label events for two thirds of the digits, MLflow on a SQLite file of the test's own.

Scenario (a): version 1 (the base model) serves and is judged by live labels; a deliberately bad head
(trained on shuffled labels) is forced past the gate as version 2 and announced; as its labels arrive the
rollback rule fires: the registry's champion goes back to version 1, the worker serves version 1 again,
and the critical ``model_rolled_back`` alert carries both accuracies. The times and counts are printed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from streamdl.connectors.es_client import es_client
from streamdl.connectors.kafka_producer import make_producer, produce_all
from streamdl.models.digits import digit_to_png, digits_model_dir
from streamdl.models.registry import Registry
from streamdl.streams.quality.compare import compare
from streamdl.streams.quality.demo import run_rollback_scenario, running_version
from streamdl.streams.quality.indices import reports_alias
from streamdl.streams.quality.reference import digits_reference
from streamdl.times import to_epoch

pytestmark = pytest.mark.integration


def test_a_bad_version_is_rolled_back_by_its_live_labels(stream_factory, tmp_path, read_topic):
    with stream_factory(
        tmp_path / "worker.log",
        worker_agents="images,events",
        similarity_alerts=False,
        max_batch_size=64,
        max_batch_duration_secs=0.2,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        quality_interval_secs=1.0,
        rollback_min_labels=100,
        rollback_margin=0.05,
        rollback_alpha=0.01,
        drift_window_secs=10.0,
        drift_reference_size=200,
        drift_min_predictions=50,
    ) as (settings, worker):
        assert worker.alive, worker.tail()
        run = run_rollback_scenario(settings, lambda: running_version(worker, "champion"), first=450)
        registry = Registry.from_settings(settings)
        alerts = read_topic(
            settings,
            settings.topic("alerts"),
            lambda got: any(json.loads(m.value())["rule"] == "model_rolled_back" for m in got),
            timeout=60,
        )
        es = es_client(settings)
        es.indices.refresh(index=reports_alias(settings))
        reports = es.search(
            index=reports_alias(settings), query={"term": {"kind": "quality"}}, size=100, sort=[{"window_end": "desc"}]
        )["hits"]["hits"]
        drift = es.search(index=reports_alias(settings), query={"term": {"kind": "drift"}}, size=10)["hits"]["hits"]
        table = compare(settings, es, registry.champion(settings.model_name).version, time.time())
        es.close()
        accuracy = worker.metric("streamdl_quality_accuracy", "version", window="5m")
        exported = exported_names(worker.metrics())

    print(f"\n{run.summary()}\n{table}")
    (alert,) = [json.loads(m.value()) for m in alerts if json.loads(m.value())["rule"] == "model_rolled_back"]
    evidence = alert["evidence"]
    print(f"   alert evidence: {evidence}")
    bad = run.bad_version
    assert run.rolled_back and registry.champion(settings.model_name).version == "1"
    assert alert["severity"] == "critical" and alert["model_version"] == bad
    assert (evidence["rolled_back_version"], evidence["restored_version"]) == (bad, "1")
    assert evidence["previous_accuracy"] > 0.9 and evidence["champion_accuracy"] < 0.4
    assert 100 <= evidence["champion_labels"] <= run.labels_joined < 400
    assert accuracy["1"] > 0.9 and accuracy[bad] < 0.4
    assert {h["_source"]["model_version"] for h in reports} >= {"1", bad}
    assert drift and all(d["_source"]["predictions"] >= 50 for d in drift)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:-1]}
    assert rows["1"][1] == "*" and rows[bad][1] != "*"  # `streamdl models compare`: version 1 serves again

    # the Grafana dashboard reads only names a real worker (or the archiver) exports
    import streamdl.streams.jobs.archiver  # noqa: F401 - registers the archiver's metrics on the registry
    from streamdl.prometheus import REGISTRY

    archive = [f for f in REGISTRY.collect() if f.name.startswith("streamdl_archive")]
    archiver = {s.name for f in archive for s in f.samples} | {f"{f.name}_total" for f in archive}
    web = {
        n for n in dashboard_metrics() if n.startswith("streamdl_web_")
    }  # the web page's: tests/integration/test_web_page.py
    missing = dashboard_metrics() - exported - archiver - web
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"


def exported_names(text: str) -> set[str]:
    """Every sample name of a Prometheus text page, with the samples a labelled family would have."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names |= {name, f"{name}_total"} if kind == "counter" else {name}
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names


def dashboard_metrics() -> set[str]:
    """The ``streamdl_*`` names the dashboard's queries read."""
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "infra/grafana/dashboards/streamdl.json").read_text())
    return {
        n for p in dashboard["panels"] for t in p["targets"] for n in re.findall(r"\bstreamdl_[a-z_]+\b", t["expr"])
    }


DRIFT_RULES = """
version: 1
rules:
  - name: class_drift
    severity: warning
    drift_above: 0.25
    signal: class_psi
  - name: embedding_drift
    severity: warning
    drift_above: 0.05
    signal: embedding_mmd
"""


def test_inverted_images_raise_a_drift_finding_within_a_few_windows(stream_factory, tmp_path, read_topic):
    """Scenario (b): the digits stream normally, then inverted (white background) with no label at all: the drift
    rules fire within a bounded number of windows of the change. The base model is registered with its drift
    reference (its held-out digits), which the worker loads: every window is judged against it."""
    digits = load_digits()
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRIFT_RULES)
    window = 4.0
    with stream_factory(
        tmp_path / "worker.log",
        worker_agents="images",
        similarity_alerts=False,
        max_batch_size=64,
        max_batch_duration_secs=0.2,
        alert_rules_file=rules,
        quality_interval_secs=1.0,
        drift_window_secs=window,
        drift_reference_size=200,
        drift_min_predictions=40,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    ) as (settings, worker):
        source = digits_model_dir(settings.state_dir).resolve().as_uri()
        Registry.from_settings(settings).ensure_base(
            settings.model_name, {}, source, reference=lambda: digits_reference(settings)
        )
        producer = make_producer(settings)

        def stream(seconds: float, start: int, invert: bool) -> int:
            """About 50 images a second for ``seconds`` (one producer); returns the next digit index."""
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for i in range(start, start + 5):
                    row = digits.data[i % len(digits.target)]
                    producer.produce(settings.topic("images"), digit_to_png(16 - row if invert else row), f"img-{i}")
                producer.flush(10)
                start += 5
                time.sleep(0.1)
            return start

        produce_all(
            settings,
            settings.topic("images"),
            [(f"ref-{i}", digit_to_png(digits.data[i]), []) for i in range(200)],
            timeout=120,
        )
        nxt = stream(3 * window, 200, invert=False)
        changed_at = time.time()
        stream(4 * window, nxt, invert=True)
        found = read_topic(
            settings,
            settings.topic("alerts"),
            lambda got: any(json.loads(m.value())["kind"] == "drift_above" for m in got),
            timeout=60,
        )
        es = es_client(settings)
        es.indices.refresh(index=reports_alias(settings))
        windows = es.search(index=reports_alias(settings), query={"term": {"kind": "drift"}}, size=100)["hits"]["hits"]
        es.close()
    assert windows and {w["_source"]["reference"] for w in windows} == {"registry"}
    before = [w["_source"] for w in windows if to_epoch(w["_source"]["window_end"]) <= changed_at]
    quiet = {s: round(max(w[s] for w in before), 3) for s in ("class_psi", "confidence_psi", "embedding_mmd")}
    print(f"\ndrift: {len(before)} windows before the change, largest signals {quiet}")
    alerts = [json.loads(m.value()) for m in found]
    drift = [a for a in alerts if a["kind"] == "drift_above"]
    assert drift, alerts
    first = min(drift, key=lambda a: a["evidence"]["window_end"])
    windows_after = (to_epoch(first["evidence"]["window_end"]) - changed_at) / window
    print(
        f"\ndrift: first {first['rule']} alert for the window ending {windows_after:.1f} windows ({window:g}s each) "
        f"after the change; signals {first['evidence']}"
    )
    assert not [a for a in drift if to_epoch(a["evidence"]["window_end"]) < changed_at], "drift before the change"
    assert windows_after <= 3


FEATURE_RULES = """
version: 1
rules:
  - name: temp_drift
    severity: warning
    drift_above: 0.25
    signal: feature_psi:temp
"""


def reading(i: int, rng, shift: float = 0.0) -> dict:
    """A sensor reading: ``temp`` (shifted by ``shift``), ``load``, and one of four sites."""
    numeric = {"temp": round(float(rng.normal(20 + shift, 2)), 3), "load": round(float(rng.random()), 3)}
    return {
        "id": f"r{i}",
        "ts": time.time(),
        "type": "reading",
        "numeric": numeric,
        "categorical": {"site": f"s{i % 4}"},
    }


def test_a_shifted_event_feature_raises_a_per_feature_drift_finding(stream_factory, tmp_path, read_topic):
    """Per-feature drift of the events: an autoencoder trained and registered by ``streamdl train events`` (its
    reference: its training events), then readings as trained, then with ``temp`` shifted by three standard
    deviations: the ``feature_psi:temp`` rule fires for a window after the change and none before."""
    from streamdl.settings import load_settings
    from streamdl.streams.jobs.event_training import train_events

    rng = np.random.default_rng(5)
    training = tmp_path / "readings.jsonl"
    training.write_text("".join(json.dumps(reading(i, rng)) + "\n" for i in range(600)))
    base = {"state_dir": tmp_path / "state", "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    train_events(
        load_settings(base, env_file=None), file=training, sample=None, kind="autoencoder", name="readings",
        epochs=2, say=print,
    )  # fmt: skip
    rules = tmp_path / "rules.yaml"
    rules.write_text(FEATURE_RULES)
    window = 4.0
    with stream_factory(
        tmp_path / "worker.log",
        worker_agents="events",
        event_model="readings",
        alert_rules_file=rules,
        max_batch_duration_secs=0.2,
        quality_interval_secs=1.0,
        drift_window_secs=window,
        drift_min_predictions=120,  # ~200 a window at 50/s; a smaller one (a burst under load) is too noisy to judge
        **base,
    ) as (settings, worker):
        producer = make_producer(settings)

        def stream(seconds: float, start: int, shift: float) -> int:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for i in range(start, start + 10):
                    producer.produce(settings.topic("events"), json.dumps(reading(i, rng, shift)).encode(), f"r{i}")
                producer.flush(10)
                start += 10
                time.sleep(0.2)
            return start

        nxt = stream(3 * window, 0, 0.0)
        stream(3 * window, nxt, 6.0)
        found = read_topic(
            settings,
            settings.topic("alerts"),
            lambda got: any(json.loads(m.value())["kind"] == "drift_above" for m in got),
            timeout=60,
        )
        exported = worker.metric("streamdl_drift", "signal", name="readings")
        es = es_client(settings)
        es.indices.refresh(index=[reports_alias(settings), settings.alias("events")])
        shifted = {"ids": {"values": [f"r{i}" for i in range(nxt, nxt + 10)]}}
        (first_shifted,) = es.search(
            index=settings.alias("events"), query=shifted, sort=[{"processed_time": "asc"}], size=1
        )["hits"]["hits"]
        changed_at = to_epoch(first_shifted["_source"]["processed_time"])  # when the worker saw the change
        query = {"term": {"kind": "feature_drift"}}
        windows = [
            h["_source"] for h in es.search(index=reports_alias(settings), query=query, size=100)["hits"]["hits"]
        ]
        es.close()
    alerts = [json.loads(m.value()) for m in found if json.loads(m.value())["kind"] == "drift_above"]
    assert alerts and windows and {w["reference"] for w in windows} == {"registry"}
    first = min(alerts, key=lambda a: a["evidence"]["window_end"])
    before = [w for w in windows if to_epoch(w["window_end"]) <= changed_at]
    quiet = {f: round(max(w["feature_psi"][f] for w in before), 3) for f in ("temp", "load", "site")}
    windows_after = (to_epoch(first["evidence"]["window_end"]) - changed_at) / window
    print(
        f"\nfeature drift: {len(before)} windows before the change, largest PSI {quiet}; first {first['rule']} alert "
        f"for the window ending {windows_after:.1f} windows after the change: temp PSI {first['evidence']['value']}"
    )
    assert first["model_name"] == "readings" and first["evidence"]["signal"] == "feature_psi:temp"
    assert not [a for a in alerts if to_epoch(a["evidence"]["window_end"]) < changed_at], "drift before the change"
    assert windows_after <= 3 and quiet["temp"] < 0.25
    assert {"feature_psi:temp", "feature_psi:load", "feature_psi:site", "anomaly_psi"} <= set(exported)
