"""The rollback scenario as one function, run by ``streamdl demo`` (its last section) and by the integration test.

Version 1 (the base digits model) serves and is judged by label events; a classifier head trained on
shuffled labels is registered and forced to champion past the gate (version 2), announced, and judged by
the labels of the digits that keep streaming; the rollback rule (:mod:`~streamdl.streams.quality.rollback`)
brings version 1 back. Needs a worker running both agents with the ``quality`` and ``rollback`` settings on.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamdl.connectors.es_client import es_client
from streamdl.connectors.kafka_producer import make_producer
from streamdl.records import to_json
from streamdl.settings import Settings
from streamdl.streams.quality.indices import labels_alias

LABELLED_SHARE = 3
"""Two digits in three get a label event."""


@dataclass
class RollbackRun:
    """What the scenario measured."""

    bad_version: str
    labels_before: int
    """Labels joined to version 1's predictions before the bad version was promoted."""
    labels_sent: int
    """Labels sent for the bad version's predictions until the rollback."""
    labels_joined: int
    """Labels of the bad version joined when the registry had rolled back."""
    seconds_to_serve: float
    """From the promotion to the worker serving the bad version."""
    seconds_to_rollback: float
    """From the worker serving the bad version to the registry's champion being version 1 again."""
    seconds_to_serve_back: float
    """From the rollback to the worker serving version 1 again."""
    rolled_back: bool

    def summary(self) -> str:
        if not self.rolled_back:
            return f"   version {self.bad_version} was NOT rolled back ({self.labels_joined} of its labels joined)"
        return (
            f"   version {self.bad_version} (a head trained on shuffled labels, forced past the gate) served "
            f"{self.seconds_to_serve:.1f}s after its promotion;\n"
            f"   rolled back after {self.labels_joined} of its labels ({self.labels_sent} sent), "
            f"{self.seconds_to_rollback:.1f}s after it served (version 1 had {self.labels_before} labels);\n"
            f"   the worker served version 1 again {self.seconds_to_serve_back:.1f}s later"
        )


def label_events(indices, ids: Callable[[int], str], targets) -> list[tuple[str, bytes, list]]:
    """Label events for two digits in three."""
    now = time.time()
    out = []
    for i in indices:
        if i % LABELLED_SHARE:
            event = {"id": f"label-{ids(i)}", "ts": now, "type": "label", "image_id": ids(i), "label": str(targets[i])}
            out.append((event["id"], to_json(event), []))
    return out


def joined(es: Any, settings: Settings, version: str) -> int:
    """Labels joined to ``version``'s predictions so far."""
    es.indices.refresh(index=labels_alias(settings))
    query = {"bool": {"filter": [{"term": {"status": "joined"}}, {"term": {"model_version": version}}]}}
    return int(es.count(index=labels_alias(settings), query=query)["count"])


def promote_shuffled_head(settings: Settings, registry: Any, epochs: int = 30, seed: int = 3) -> str:
    """A softmax head over the base featurizer trained on 300 digits with shuffled labels, registered as the
    next version, forced to champion (no gate) and announced on model-updates; returns its version."""
    import keras
    from sklearn.datasets import load_digits

    from streamdl.models.catalog import load_handler
    from streamdl.models.digits import digit_id, digit_to_array, held_out_ids
    from streamdl.models.retraining import heads
    from streamdl.streams.jobs.retrain import announce
    from streamdl.streams.quality.reference import head_reference

    digits = load_digits()
    featurizer = load_handler(
        settings.model_name, state_dir=settings.state_dir, batch_size=64, weights=settings.weights, mode="featurize"
    )
    featurizer.load()

    def embed(indices: list[int]) -> np.ndarray:
        return featurizer.predict_batch(np.stack([digit_to_array(digits.data[i]) for i in indices])).embeddings

    embeddings = embed(list(range(300)))
    shuffled = np.random.default_rng(seed).permutation(digits.target[:300])
    model = heads.build_head("softmax", embeddings.shape[1], 10, 0.0)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(embeddings, shuffled, epochs=epochs, verbose=0)
    name, labels = settings.model_name, [str(d) for d in range(10)]
    version = str(max(int(v.version) for v in registry.versions(name)) + 1)
    registry.mlflow.set_tracking_uri(registry.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "head"
        info = {"name": f"{name}-head", "version": version, "model_name": name, "model_version": version}
        heads.save_head(model, folder, {**info, "labels": labels})
        with registry.mlflow.start_run(experiment_id=registry.experiment_id(), run_name=f"shuffled-{version}") as run:
            registry.mlflow.log_artifacts(str(folder), artifact_path="head")
    registered = registry.register_head(name, run.info.run_id, "head", {}, {"gate": "forced: shuffled labels"})
    held_out = embed([i for i in range(300, len(digits.target)) if digit_id(i) in held_out_ids()])  # unseen by both
    registry.log_reference(registered, head_reference(model, labels, held_out, settings.drift_reservoir_size))
    announce(settings, registry.promote(name, registered.version, reason="forced past the gate (shuffled labels)"))
    return registered.version


def run_rollback_scenario(
    settings: Settings,
    serving: Callable[[], str | None],
    first: int = 450,
    say: Callable[[str], None] = print,
    timeout: float = 180.0,
) -> RollbackRun:
    """The scenario on a running worker; ``serving()`` says which version its images pipeline serves now.

    Streams digits ``0..first`` with their labels (version 1), promotes the shuffled head, then streams the
    rest, 30 digits and their labels a second, until the registry rolled back or ``timeout`` passed; unlabelled
    images keep coming while waiting for a swap (a swap happens between micro-batches)."""
    from sklearn.datasets import load_digits

    from streamdl.models.digits import digit_id, digit_to_png, digits_model_dir
    from streamdl.models.registry import Registry
    from streamdl.streams.quality.reference import digits_reference

    digits = load_digits()
    name = settings.model_name
    registry = Registry.from_settings(settings)
    info = digits_model_dir(settings.state_dir) / "info.json"
    metrics = {"holdout_accuracy": float(json.loads(info.read_text())["holdout_accuracy"])}
    source = digits_model_dir(settings.state_dir).resolve().as_uri()
    registry.ensure_base(name, metrics, source=source, reference=lambda: digits_reference(settings))
    es, producer = es_client(settings), make_producer(settings)

    def ids(i: int) -> str:  # ids of their own: the demo streamed the digits under digit_id already
        return f"quality-{digit_id(i)}"

    def send(indices, labels: bool = True) -> int:
        for i in indices:
            label = [("label", str(digits.target[i]).encode())]  # as the demo's digits carry theirs
            producer.produce(settings.topic("images"), digit_to_png(digits.data[i]), ids(i), headers=label)
        producer.flush(30)
        events = label_events(indices, ids, digits.target) if labels else []
        for key, value, _ in events:
            producer.produce(settings.topic("events"), value, key)
        producer.flush(30)
        return len(events)

    def until(what: str, condition: Callable[[], bool], nudge: bool = False) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                say(f"   timed out waiting for {what}")
                return False
            if nudge:
                producer.produce(settings.topic("images"), digit_to_png(digits.data[0]), f"warm-{time.time()}")
                producer.flush(10)
            time.sleep(0.5)
        return True

    sent_v1 = send(range(first))
    until("version 1's labels", lambda: joined(es, settings, "1") >= sent_v1 - 5)
    labels_before = joined(es, settings, "1")
    say(f"   version 1 serves; {labels_before} labels joined to its predictions")
    bad = promote_shuffled_head(settings, registry)
    promoted = time.monotonic()
    say(f"   version {bad} (shuffled labels) registered and forced to champion; announced")
    until(f"the worker serving version {bad}", lambda: serving() == bad, nudge=True)
    served = time.monotonic()
    sent, start = 0, first
    deadline = served + timeout
    while registry.champion(name).version == bad and start < len(digits.target) and time.monotonic() < deadline:
        sent += send(range(start, min(start + 30, len(digits.target))))
        start += 30
        time.sleep(1.0)
    rolled_back = until("the rollback", lambda: registry.champion(name).version == "1")
    back = time.monotonic()
    labels_joined = joined(es, settings, bad)
    if rolled_back:
        until("the worker serving version 1 again", lambda: serving() == "1", nudge=True)
    es.close()
    return RollbackRun(
        bad_version=bad,
        labels_before=labels_before,
        labels_sent=sent,
        labels_joined=labels_joined,
        seconds_to_serve=served - promoted,
        seconds_to_rollback=back - served,
        seconds_to_serve_back=time.monotonic() - back,
        rolled_back=rolled_back,
    )
