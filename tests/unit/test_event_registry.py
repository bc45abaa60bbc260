"""Event models in the one registry (MLflow, a SQLite store of the test's own): registered, promoted and rolled
back like the image model, and the worker loads the champion."""

from __future__ import annotations

import numpy as np

from streamdl.models.event_features import EventRecord
from streamdl.models.event_models import train_event_model
from streamdl.models.registry import Registry
from streamdl.settings import load_settings
from streamdl.streams.agents.worker import event_model_ref
from streamdl.streams.cli.main import main


def records(n: int = 96) -> list[EventRecord]:
    rng = np.random.default_rng(3)
    return [EventRecord(1_700_000_000 + 60 * i, {"a": float(rng.normal()), "b": 1.0}, {}) for i in range(n)]


def test_event_model_versions_register_promote_and_roll_back(tmp_path, capsys):
    settings = load_settings({"state_dir": tmp_path, "event_model": "machines"}, env_file=None)
    assert event_model_ref(settings) == "machines"  # no registry yet: the latest saved version
    registry = Registry.from_settings(settings)
    assert "latest saved version" not in registry.unregistered("machines")
    folders = [
        train_event_model(records(), kind="autoencoder", name="machines", state_dir=tmp_path, epochs=1)
        for _ in range(2)
    ]
    assert "latest saved version 2" in registry.unregistered("machines")
    first = registry.register_event_model("machines", folders[0], {"loss": 0.5})
    second = registry.register_event_model("machines", folders[1], {"loss": 0.4})
    assert (first.kind, second.kind) == ("event", "event") and registry.champion("machines").version == second.version
    assert event_model_ref(settings) == "machines:2"

    assert main(["models", "rollback", "--model", "machines", "--state-dir", str(tmp_path)]) == 0
    assert "workers load it when they (re)start" in capsys.readouterr().out
    assert event_model_ref(settings) == "machines:1"
    assert main(["models", "list", "--model", "machines", "--state-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "event" in listing and listing.count("\n") >= 3

    pinned = load_settings({"state_dir": tmp_path, "event_model": "machines:2"}, env_file=None)
    assert event_model_ref(pinned) == "machines:2"  # a pinned version is served as given


def test_train_events_registers_the_new_version_as_champion(tmp_path, capsys):
    import json

    lines = [
        json.dumps({"id": f"e{i}", "ts": 1_700_000_000 + 60 * i, "type": "reading", "numeric": {"a": i % 7, "b": 1.0}})
        for i in range(96)
    ]
    path = tmp_path / "readings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main(["train", "events", str(path), "--epochs", "1", "--state-dir", str(tmp_path)]) == 0
    assert "registered readings version 1" in capsys.readouterr().err
    settings = load_settings({"state_dir": tmp_path, "event_model": "readings"}, env_file=None)
    champion = Registry.from_settings(settings).champion("readings")
    assert champion is not None and champion.kind == "event" and event_model_ref(settings) == "readings:1"
    # its per-feature drift reference was saved with it, from its training events scored by the model
    from streamdl.streams.quality.reference import feature_references

    reference = feature_references(settings)("readings", "1")
    assert reference is not None and reference.n == 96 and set(reference.numeric) == {"a", "b"}
    assert reference.anomaly and set(reference.signals()) == {"feature_psi:a", "feature_psi:b", "anomaly_psi"}
    assert sum(reference.counts["feature_psi:a"]) == 96 and reference.numeric["b"] == [1.0]  # a constant: one edge
