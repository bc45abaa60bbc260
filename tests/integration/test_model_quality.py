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
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from streamdl.connectors.es_client import es_client
from streamdl.connectors.kafka_producer import make_producer, produce_all
from streamdl.models.digits import digit_id, digit_to_array, digit_to_png, digits_model_dir
from streamdl.models.registry import Registry
from streamdl.records import to_json
from streamdl.streams.jobs.retrain import announce
from streamdl.streams.quality.indices import labels_alias, reports_alias
from tests.integration.polling import wait

pytestmark = pytest.mark.integration

FIRST = 450
"""Images served by version 1 before the bad version is promoted."""


def publish(settings, digits, indices, labelled) -> int:
    """The images, then label events for two thirds of them; returns the labels sent."""
    produce_all(
        settings,
        settings.topic("images"),
        [(digit_id(i), digit_to_png(digits.data[i]), []) for i in indices],
        timeout=120,
    )
    labels = [i for i in indices if i % 3]
    now = time.time()
    events = [
        {
            "id": f"label-{digit_id(i)}",
            "ts": now,
            "type": "label",
            "image_id": digit_id(i),
            "label": str(digits.target[i]),
        }
        for i in labels
    ]
    produce_all(settings, settings.topic("events"), [(e["id"], to_json(e), []) for e in events])
    labelled.update(labels)
    return len(labels)


def joined(es, settings, version: str) -> int:
    es.indices.refresh(index=labels_alias(settings))
    query = {"bool": {"filter": [{"term": {"status": "joined"}}, {"term": {"model_version": version}}]}}
    return int(es.count(index=labels_alias(settings), query=query)["count"])


def promote_a_bad_head(settings, registry: Registry, digits) -> str:
    """A softmax head trained on shuffled labels, registered and forced to champion, then announced."""
    import keras

    from streamdl.models.catalog import load_handler
    from streamdl.models.retraining import heads

    featurizer = load_handler(
        settings.model_name, state_dir=settings.state_dir, batch_size=64, weights=settings.weights, mode="featurize"
    )
    featurizer.load()
    x = np.stack([digit_to_array(digits.data[i]) for i in range(300)])
    embeddings = featurizer.predict_batch(x).embeddings
    shuffled = np.random.default_rng(3).permutation(digits.target[:300])
    model = heads.build_head("softmax", embeddings.shape[1], 10, 0.0)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(embeddings, shuffled, epochs=30, verbose=0)
    name = settings.model_name
    version = str(max(int(v.version) for v in registry.versions(name)) + 1)
    mlflow = registry.mlflow
    mlflow.set_tracking_uri(registry.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "head"
        info = {"name": f"{name}-head", "version": version, "model_name": name, "model_version": version}
        heads.save_head(model, folder, {**info, "labels": [str(d) for d in range(10)]})
        with mlflow.start_run(experiment_id=registry.experiment_id(), run_name=f"bad-{version}") as run:
            mlflow.log_artifacts(str(folder), artifact_path="head")
    registered = registry.register_head(name, run.info.run_id, "head", {}, {"gate": "forced: shuffled labels"})
    announce(settings, registry.promote(name, registered.version, reason="forced past the gate (test)"))
    return registered.version


def test_a_bad_version_is_rolled_back_by_its_live_labels(stream_factory, tmp_path, read_topic):
    digits = load_digits()
    with stream_factory(
        tmp_path / "worker.log",
        worker_agents="images,events",
        similarity_alerts=False,
        max_batch_size=64,
        max_batch_duration_secs=0.2,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        quality_interval_secs=1.0,
        drift_window_secs=10.0,
        drift_reference_size=200,
        drift_min_predictions=50,
        rollback_min_labels=100,
        rollback_margin=0.05,
        rollback_alpha=0.01,
    ) as (settings, worker):
        registry = Registry.from_settings(settings)
        info = json.loads((digits_model_dir(settings.state_dir) / "info.json").read_text())
        registry.ensure_base(settings.model_name, {"holdout_accuracy": info["holdout_accuracy"]}, source="test")
        es = es_client(settings)
        labelled: set[int] = set()

        def serving(version: str) -> bool:  # a swap happens between micro-batches: unlabelled images keep coming
            produce_all(settings, settings.topic("images"), [(f"warm-{time.time()}", digit_to_png(digits.data[0]), [])])
            return worker.metric("streamdl_model_loaded", "version", stream="images").get(version) == 1.0

        sent_v1 = publish(settings, digits, range(FIRST), labelled)
        wait("version 1's labels joined", lambda: joined(es, settings, "1") >= sent_v1 - 5, alive=(worker,))

        bad = promote_a_bad_head(settings, registry, digits)
        promoted_at = time.monotonic()
        wait(f"the worker serving version {bad}", lambda: serving(bad), alive=(worker,))
        served_at = time.monotonic()

        sent_bad, start = 0, FIRST
        while registry.champion(settings.model_name).version == bad and start < len(digits.target):
            sent_bad += publish(settings, digits, range(start, min(start + 30, len(digits.target))), labelled)
            start += 30
            time.sleep(1.0)
        wait(
            "the rollback",
            lambda: registry.champion(settings.model_name).version == "1",
            timeout=120,
            alive=(worker,),
        )
        rolled_back_at = time.monotonic()
        labels_at_rollback = joined(es, settings, bad)
        wait("the worker serving version 1 again", lambda: serving("1"), alive=(worker,))
        back_at = time.monotonic()

        alerts = read_topic(
            settings,
            settings.topic("alerts"),
            lambda got: any(json.loads(m.value())["rule"] == "model_rolled_back" for m in got),
            timeout=60,
        )
        (alert,) = [json.loads(m.value()) for m in alerts if json.loads(m.value())["rule"] == "model_rolled_back"]
        evidence = alert["evidence"]
        es.indices.refresh(index=reports_alias(settings))
        reports = es.search(
            index=reports_alias(settings), query={"term": {"kind": "quality"}}, size=100, sort=[{"window_end": "desc"}]
        )["hits"]["hits"]
        drift = es.search(index=reports_alias(settings), query={"term": {"kind": "drift"}}, size=10)["hits"]["hits"]
        accuracy = worker.metric("streamdl_quality_accuracy", "version", window="5m")
        exported = exported_names(worker.metrics())
        es.close()

    print(
        f"\nrollback: v{bad} promoted, served after {served_at - promoted_at:.1f}s; {sent_bad} labels sent for it, "
        f"{labels_at_rollback} joined when the registry rolled back "
        f"({rolled_back_at - served_at:.1f}s after it served); the worker served v1 again "
        f"{back_at - rolled_back_at:.1f}s later. Evidence: {evidence}"
    )
    assert alert["severity"] == "critical" and alert["model_version"] == bad
    assert (evidence["rolled_back_version"], evidence["restored_version"]) == (bad, "1")
    assert evidence["previous_accuracy"] > 0.9 and evidence["champion_accuracy"] < 0.4
    assert evidence["champion_labels"] >= 100 and labels_at_rollback < 400
    assert accuracy["1"] > 0.9 and accuracy[bad] < 0.4
    assert {h["_source"]["model_version"] for h in reports} >= {"1", bad}
    assert registry.champion(settings.model_name).version == "1"
    assert drift and all(d["_source"]["predictions"] >= 50 for d in drift)

    # the Grafana dashboard reads only names a real worker (or the archiver) exports
    import streamdl.streams.jobs.archiver  # noqa: F401 - registers the archiver's metrics on the registry
    from streamdl.prometheus import REGISTRY

    archiver = {
        s.name for family in REGISTRY.collect() if family.name.startswith("streamdl_archive") for s in family.samples
    }
    archiver |= {f"{f.name}_total" for f in REGISTRY.collect() if f.name.startswith("streamdl_archive")}
    missing = dashboard_metrics() - exported - archiver
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
    rules fire within a bounded number of windows of the change."""
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
    ) as (settings, worker):
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
    alerts = [json.loads(m.value()) for m in found]
    drift = [a for a in alerts if a["kind"] == "drift_above"]
    assert drift, alerts
    first = min(drift, key=lambda a: a["evidence"]["window_end"])
    from streamdl.times import to_epoch

    windows_after = (to_epoch(first["evidence"]["window_end"]) - changed_at) / window
    print(
        f"\ndrift: first {first['rule']} alert for the window ending {windows_after:.1f} windows ({window:g}s each) "
        f"after the change; signals {first['evidence']}"
    )
    assert not [a for a in drift if to_epoch(a["evidence"]["window_end"]) < changed_at], "drift before the change"
    assert windows_after <= 3
