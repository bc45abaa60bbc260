"""Scenario (c) of model quality on the real local stack: a real worker (images and events agents), MLflow on a
SQLite file of the test's own, label events for two thirds of the digits.

A head trained on shuffled labels runs as the shadow of version 1: its predictions reach the shadow topic and
index, every label judges both versions, ``streamdl models compare`` shows them side by side, and none of the
shadow's alerts is published although its live accuracy is far below the ``accuracy_below`` rule (the champion's
drift alerts, from a rule that always fires, show the rules were live). Then the same head serves a canary
fraction of the ids: exactly the ids whose stable hash falls below it, and now its low accuracy is alerted on.
Promotion on live evidence refuses it. The times and counts are printed.
"""

from __future__ import annotations

import json
import time

import pytest

from streamdl.connectors.es_client import es_client
from streamdl.models.registry import Registry
from streamdl.streams.quality.compare import compare
from streamdl.streams.quality.demo import run_shadow_scenario, running_version
from streamdl.streams.quality.indices import reports_alias
from streamdl.streams.quality.promotion import promotion_evidence

pytestmark = pytest.mark.integration

RULES = """
version: 1
rules:
  - name: live_accuracy
    severity: critical
    accuracy_below: 0.8
    window: 5m
    min_labels: 30
  - name: any_drift
    severity: info
    drift_above: 0.0
    signal: class_psi
"""


def test_a_shadow_is_judged_beside_the_champion_and_never_alerts_and_a_canary_serves_its_ids(
    stream_factory, tmp_path, read_topic
):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with stream_factory(
        tmp_path / "worker.log",
        worker_agents="images,events",
        similarity_alerts=False,
        max_batch_size=64,
        max_batch_duration_secs=0.2,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        alert_rules_file=rules,
        quality_interval_secs=1.0,
        rollback=False,
        drift_window_secs=3.0,
        drift_reference_size=60,
        drift_min_predictions=20,
    ) as (settings, worker):
        assert worker.alive, worker.tail()
        started = time.monotonic()
        run = run_shadow_scenario(settings, lambda role: running_version(worker, role), images=300, canary_images=200)
        scenario_secs = time.monotonic() - started
        bad = run.version

        def alerts_of(version: str, kind: str):
            return lambda got: any(
                json.loads(m.value())["model_version"] == version and json.loads(m.value())["kind"] == kind for m in got
            )

        # the canary served and was judged: its low accuracy is alerted on (so the rule could fire for the shadow)
        alerts = read_topic(settings, settings.topic("alerts"), alerts_of(bad, "accuracy_below"), timeout=60)

        def scenario_keys(got) -> set[str]:  # not the unlabelled images sent while waiting for a swap
            return {m.key().decode() for m in got if m.key().decode().startswith("shadow-")}

        shadow_topic = read_topic(
            settings,
            settings.topic("predictions-shadow"),
            lambda got: len(scenario_keys(got)) >= run.images,
            timeout=30,
        )
        registry = Registry.from_settings(settings)
        es = es_client(settings)
        es.indices.refresh(index=reports_alias(settings))
        drift = es.search(
            index=reports_alias(settings),
            query={"bool": {"filter": [{"term": {"kind": "drift"}}, {"term": {"role": "shadow"}}]}},
            size=10,
        )["hits"]["hits"]
        table = compare(settings, es, "1", time.time(), {bad: "shadow"})
        verdict = promotion_evidence(settings, es, registry, bad, min_labels=50, margin=0.05, alpha=0.05)
        es.close()
        accuracy = worker.metric("streamdl_quality_accuracy", "version", window="5m")

    from streamdl.times import to_epoch

    published = [json.loads(m.value()) for m in alerts]
    print(f"\n{run.summary()}\n   scenario {scenario_secs:.1f}s\n{table}")
    print(f"   promote --min-labels 50: {verdict.message}")
    print(f"   alerts published: {sorted({(a['rule'], a['model_version']) for a in published})}")

    # (c) the shadow's predictions and live accuracy beside the champion's
    assert run.seconds_to_shadow < 120 and run.shadow_indexed >= run.images
    assert len(scenario_keys(shadow_topic)) >= run.images
    assert run.joined["1"] >= run.labels_sent and run.joined[bad] >= run.labels_sent
    assert run.accuracy["1"] > 0.9 and run.accuracy[bad] < 0.4
    assert accuracy["1"] > 0.9 and accuracy[bad] < 0.4  # the gauges, per version
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:-1]}
    assert rows["1"][1] == "*" and rows[bad][1] == "shadow"
    assert drift and {d["_source"]["model_version"] for d in drift} == {bad}
    # none of its alerts was published while it was the shadow, though the rules were live: for the champion's
    # drift, and for the same version's accuracy once it served as the canary
    assert not [a for a in published if a["model_version"] == bad and to_epoch(a["raised_at"]) < run.canary_at]
    assert any(a["kind"] == "drift_above" and a["model_version"] == "1" for a in published)
    assert any(a["kind"] == "accuracy_below" and a["model_version"] == bad for a in published)
    # the canary served exactly its hash fraction of the ids
    assert 20 < len(run.canary_expected) < 80 and run.canary_served == run.canary_expected
    # promotion on live evidence refuses the bad head
    assert not verdict.accepted and "not shown to be within the margin" in verdict.message


def test_the_cli_sets_and_ends_roles_and_promotes_only_on_live_evidence(
    own_settings, tmp_path, monkeypatch, capsys, read_topic
):
    """``streamdl models shadow|canary|promote --min-labels`` against the real Kafka (the announcements) and
    Elasticsearch (the live labels: none here)."""
    from streamdl.streams.cli.main import main

    with own_settings(mlflow_tracking_uri=f"sqlite:///{tmp_path}/m.db") as settings:
        for key in ("topic_prefix", "index_prefix", "mlflow_tracking_uri"):
            monkeypatch.setenv(f"STREAMDL_{key.upper()}", getattr(settings, key))
        monkeypatch.chdir(tmp_path)  # no .env of the project's
        name = settings.model_name
        registry = Registry.from_settings(settings)
        registry.ensure_base(name, {}, source=tmp_path.as_uri())
        registry.client.create_model_version(name, source=tmp_path.as_uri(), tags={"kind": "head"})

        def cli(*args: str) -> tuple[int, str, str]:
            code = main(["models", *args, "--state-dir", str(tmp_path / "state")])
            out, err = capsys.readouterr()
            return code, out, err

        assert cli("shadow", "2")[0] == 0
        code, _, err = cli("canary", "2", "--fraction", "0.2")
        assert code == 2 and "is the shadow already" in err
        assert cli("shadow", "1")[0] == 2  # the champion
        assert cli("shadow", "--off")[0] == 0
        code, out, _ = cli("canary", "2", "--fraction", "0.2")
        assert code == 0 and "version 2 serves 0.2 of the ids as the canary" in out
        code, out, _ = cli("compare")
        assert code == 0 and "2 canary@0.2" in out
        code, out, _ = cli("list")
        assert code == 0 and out.splitlines()[2].split()[:3] == ["2", "head", "canary"]
        code, _, err = cli("promote", "2", "--min-labels", "10")
        assert code == 6 and "version 2 has 0 joined live labels; --min-labels needs 10" in err
        assert registry.champion(name).version == "1"
        assert cli("canary", "--off")[0] == 0
        updates = read_topic(settings, settings.topic("model-updates"), lambda got: len(got) >= 4, timeout=30, settle=1)
    got = [(m.key().decode(), json.loads(m.value())) for m in updates]
    assert [(key, update["version"], update["fraction"]) for key, update in got] == [
        (f"{name}:shadow", "2", 0.0),
        (f"{name}:shadow", None, 0.0),
        (f"{name}:canary", "2", 0.2),
        (f"{name}:canary", None, 0.0),
    ]
