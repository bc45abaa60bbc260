"""A model update arriving mid-stream: a retrained head is registered (version 2), promoted and
announced on the model-updates topic while images stream; the worker swaps it in between batches.
Every message is accounted for, and every prediction names version 1 or 2."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from tests.faults.harness import account, assert_accounted, read_all, report, row

pytestmark = pytest.mark.faults

COUNT = 5_400
RATE = 100.0


def register_head(settings, folder: Path):
    """Train a classifier head on the digits model's embeddings and register it as version 2 of the
    served model (version 1: the base model, as a retraining run would have registered it)."""
    from streamdl.models.catalog import load_handler
    from streamdl.models.digits import digits_model_dir, load_digit_images
    from streamdl.models.registry import Registry
    from streamdl.models.retraining import heads

    handler = load_handler(
        settings.model_name, state_dir=settings.state_dir, batch_size=settings.max_batch_size, weights=settings.weights
    )
    handler.load()
    images, labels = load_digit_images()
    embeddings = handler.predict_batch(images).embeddings
    train = np.arange(len(labels)) % 5 != 0
    trained = heads.train_head(
        embeddings[train],
        labels[train],
        embeddings[~train],
        labels[~train],
        10,
        [heads.Candidate("softmax", 3e-3, 1e-4)],
        epochs=10,
    )
    name = settings.model_name
    head_dir = folder / "head"
    heads.save_head(
        trained.model,
        head_dir,
        {
            "name": f"{name}-head",
            "version": "2",
            "model_name": name,
            "model_version": "2",
            "labels": [str(d) for d in range(10)],
        },
    )
    registry = Registry.from_settings(settings)
    registry.ensure_base(name, {}, source=digits_model_dir(settings.state_dir).resolve().as_uri())
    mlflow = registry.mlflow
    mlflow.set_tracking_uri(registry.tracking_uri)
    with mlflow.start_run(experiment_id=registry.experiment_id(), run_name="fault-suite-head") as run:
        mlflow.log_artifacts(str(head_dir), artifact_path="head")
    version = registry.register_head(
        name,
        run.info.run_id,
        "head",
        {"val_accuracy": trained.val_accuracy},
        {"labels": ",".join(str(d) for d in range(10))},
    )
    assert version.version == "2", version
    return registry


def test_a_model_update_arrives_mid_stream(fault_run, fault_results):
    from streamdl.streams.jobs.retrain import announce

    run = fault_run
    run.settings = run.settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{run.folder / 'mlflow.db'}"})
    registry = register_head(run.settings, run.folder)
    worker = run.worker()
    with run.streaming("update", COUNT, RATE) as (plan, monitor, producer):
        monitor.wait_outputs(2_000, timeout=180, alive=run.alive)
        registry.promote(run.settings.model_name, "2", "fault suite: a model update mid-stream")
        announced = time.time()
        t_announce = monitor.now()
        announce(run.settings, registry.show(run.settings.model_name, "2"))
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=run.alive)
    predictions = [json.loads(m.value()) for m in read_all(run.settings, run.settings.topic("predictions"))]
    first_v2 = min(
        (datetime.fromisoformat(p["processed_time"]).timestamp() for p in predictions if p["model_version"] == "2"),
        default=None,
    )
    pause = monitor.longest_stall(t_announce, t_announce + 20)
    swap = "-" if first_v2 is None else f"{first_v2 - announced:.1f} s"
    r = row(
        "model-update",
        "model v2 promoted + announced mid-stream",
        acc,
        f"{swap} to v2",
        f"predictions by version {dict(sorted(acc.versions.items()))}; longest stall of the outputs in the 20 s "
        f"after the announcement {pause:.1f} s",
    )
    report(fault_results, r)
    assert set(acc.versions) == {"1", "2"}, acc.versions
    by_partition: dict[int, list[str]] = {}
    for p in sorted(predictions, key=lambda p: (p["kafka"]["partition"], p["kafka"]["offset"])):
        by_partition.setdefault(p["kafka"]["partition"], []).append(p["model_version"])
    for seq in by_partition.values():  # once a partition saw version 2, it never goes back
        assert "1" not in seq[seq.index("2") :] if "2" in seq else True
    assert worker.metric("streamdl_model_loaded", "version", stream="images").get("2") == 1.0
    assert Counter(p["model_version"] for p in predictions)["2"] >= COUNT - 2_500
    assert_accounted(acc, plan)
