"""The quality scenarios as functions, run by ``streamdl demo`` (its last section) and by the integration tests.

Rollback (:func:`run_rollback_scenario`): version 1 (the base digits model) serves and is judged by label
events; a classifier head trained on shuffled labels is registered and forced to champion past the gate
(version 2), announced, and judged by the labels of the digits that keep streaming; the rollback rule
(:mod:`~streamdl.streams.quality.rollback`) brings version 1 back. Needs a worker running both agents with the
``quality`` and ``rollback`` settings on.

Shadow and canary (:func:`run_shadow_scenario`): the same bad head runs as the shadow of version 1 on labelled
digits (its predictions and live accuracy beside the champion's), then as a canary on a share of the ids.
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
    """:func:`register_shuffled_head`, forced to champion (no gate) and announced on model-updates; returns its
    version."""
    from streamdl.streams.jobs.retrain import announce

    version = register_shuffled_head(settings, registry, epochs, seed)
    announce(settings, registry.promote(settings.model_name, version, reason="forced past the gate (shuffled labels)"))
    return version


def register_shuffled_head(settings: Settings, registry: Any, epochs: int = 30, seed: int = 3) -> str:
    """A softmax head over the base featurizer trained on 300 digits with shuffled labels, registered as the
    next version (not promoted); returns its version."""
    import keras
    from sklearn.datasets import load_digits

    from streamdl.models.catalog import load_handler
    from streamdl.models.digits import digit_id, digit_to_array, held_out_ids
    from streamdl.models.retraining import heads
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
    return registered.version


class DigitStream:
    """The digits sample streamed to a running worker under ids of the scenario's own (``prefix``), each image with
    its ``label`` header and, for two in three, a label event."""

    def __init__(self, settings: Settings, prefix: str, say: Callable[[str], None], timeout: float) -> None:
        from sklearn.datasets import load_digits

        self.settings, self.prefix, self.say, self.timeout = settings, prefix, say, timeout
        self.digits = load_digits()
        self.producer = make_producer(settings)

    def forget_earlier_runs(self, es: Any) -> None:
        """Delete what an earlier run of the scenario left under its ids: its labels (joined to the versions
        of an earlier registry, they would judge this run's versions by the same numbers) and its predictions
        (a label arriving before this run's prediction would join the old one)."""
        from streamdl.streams.pipelines.roles import shadow_index

        indices = ",".join([labels_alias(self.settings), self.settings.alias("images"), shadow_index(self.settings)])
        query = {"prefix": {"image_id": f"{self.prefix}-"}}
        while True:  # search and bulk delete: this Elasticsearch has no _delete_by_query (no reindex module)
            es.indices.refresh(index=indices, ignore_unavailable=True)
            hits = es.search(index=indices, query=query, source=False, size=2000, ignore_unavailable=True)["hits"]
            if not hits["hits"]:
                return
            es.bulk(operations=[{"delete": {"_index": h["_index"], "_id": h["_id"]}} for h in hits["hits"]])

    def id(self, i: int) -> str:  # ids of their own: the demo streamed the digits under digit_id already
        from streamdl.models.digits import digit_id

        return f"{self.prefix}-{digit_id(i)}"

    def send(self, indices, labels: bool = True) -> int:
        """The images of ``indices``, then the label events of two in three; returns the labels sent."""
        from streamdl.models.digits import digit_to_png

        for i in indices:
            label = [("label", str(self.digits.target[i]).encode())]  # as the demo's digits carry theirs
            image = digit_to_png(self.digits.data[i])
            self.producer.produce(self.settings.topic("images"), image, self.id(i), headers=label)
        self.producer.flush(30)
        events = label_events(indices, self.id, self.digits.target) if labels else []
        for key, value, _ in events:
            self.producer.produce(self.settings.topic("events"), value, key)
        self.producer.flush(30)
        return len(events)

    def until(self, what: str, condition: Callable[[], bool], nudge: bool = False) -> bool:
        """Wait for ``condition`` (``nudge``: an unlabelled image every half second, as a swap waits for a batch)."""
        from streamdl.models.digits import digit_to_png

        deadline = time.monotonic() + self.timeout
        while not condition():
            if time.monotonic() > deadline:
                self.say(f"   timed out waiting for {what}")
                return False
            if nudge:
                warm = f"warm-{time.time()}"
                self.producer.produce(self.settings.topic("images"), digit_to_png(self.digits.data[0]), warm)
                self.producer.flush(10)
            time.sleep(0.5)
        return True


def base_registry(settings: Settings) -> Any:
    """The registry, with the base digits model registered as version 1 (the champion) when it was not yet."""
    from streamdl.models.digits import digits_model_dir
    from streamdl.models.registry import Registry
    from streamdl.streams.quality.reference import digits_reference

    registry = Registry.from_settings(settings)
    info = digits_model_dir(settings.state_dir) / "info.json"
    metrics = {"holdout_accuracy": float(json.loads(info.read_text())["holdout_accuracy"])}
    source = digits_model_dir(settings.state_dir).resolve().as_uri()
    registry.ensure_base(settings.model_name, metrics, source=source, reference=lambda: digits_reference(settings))
    return registry


def running_version(worker: Any, role: str) -> str | None:
    """The version a worker's images pipeline runs as ``champion``, ``shadow`` or ``canary`` now (its metrics)."""
    if role == "champion":
        loaded = worker.metric("streamdl_model_loaded", "version", stream="images")
    else:
        loaded = worker.metric("streamdl_model_role", "version", stream="images", role=role)
    return next((version for version, value in loaded.items() if value == 1.0), None)


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
    name = settings.model_name
    registry = base_registry(settings)
    es, stream = es_client(settings), DigitStream(settings, "quality", say, timeout)
    stream.forget_earlier_runs(es)
    total = len(stream.digits.target)

    sent_v1 = stream.send(range(first))
    stream.until("version 1's labels", lambda: joined(es, settings, "1") >= sent_v1 - 5)
    labels_before = joined(es, settings, "1")
    say(f"   version 1 serves; {labels_before} labels joined to its predictions")
    bad = promote_shuffled_head(settings, registry)
    promoted = time.monotonic()
    say(f"   version {bad} (shuffled labels) registered and forced to champion; announced")
    stream.until(f"the worker serving version {bad}", lambda: serving() == bad, nudge=True)
    served = time.monotonic()
    sent, start = 0, first
    deadline = served + timeout
    while registry.champion(name).version == bad and start < total and time.monotonic() < deadline:
        sent += stream.send(range(start, min(start + 30, total)))
        start += 30
        time.sleep(1.0)
    rolled_back = stream.until("the rollback", lambda: registry.champion(name).version == "1")
    back = time.monotonic()
    labels_joined = joined(es, settings, bad)
    if rolled_back:
        stream.until("the worker serving version 1 again", lambda: serving() == "1", nudge=True)
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


@dataclass
class ShadowRun:
    """What the shadow and canary scenario measured."""

    version: str
    """The bad head: first the shadow of version 1, then its canary."""
    seconds_to_shadow: float
    """From the shadow's announcement to the worker scoring it."""
    images: int
    labels_sent: int
    seconds_to_judged: float
    """From the last label event sent to every label judging both versions."""
    joined: dict[str, int]
    """Labels joined per version (the shadow's judge its shadow predictions)."""
    accuracy: dict[str, float]
    """Live accuracy per version over every label."""
    shadow_indexed: int
    """Shadow predictions in the shadow index."""
    fraction: float
    canary_at: float
    """When the canary was announced (epoch seconds): the shadow phase ended before it."""
    seconds_to_canary: float
    """From the canary's announcement to the worker serving it."""
    canary_images: int
    canary_served: list[str]
    """The ids of the canary phase the canary version served (read back from the images index)."""
    canary_expected: list[str]
    """The ids whose stable hash falls below the fraction."""

    def summary(self) -> str:
        acc = ", ".join(f"version {v} {a:.3f} on {self.joined.get(v, 0)}" for v, a in sorted(self.accuracy.items()))
        return (
            f"   version {self.version} ran as the shadow {self.seconds_to_shadow:.1f}s after its announcement; "
            f"{self.images} digits, {self.labels_sent} labels;\n"
            f"   {self.shadow_indexed} shadow predictions indexed; every label judged both versions "
            f"{self.seconds_to_judged:.1f}s after the last was sent; live accuracy: {acc};\n"
            f"   as a canary on {self.fraction:g} of the ids ({self.seconds_to_canary:.1f}s after its announcement) it "
            f"served {len(self.canary_served)} of {self.canary_images} digits, {len(self.canary_expected)} expected "
            f"by the hash{'' if self.canary_served == self.canary_expected else ' (NOT the same ids)'}"
        )


def run_shadow_scenario(
    settings: Settings,
    running: Callable[[str], str | None],
    images: int = 300,
    canary_images: int = 200,
    fraction: float = 0.25,
    say: Callable[[str], None] = print,
    timeout: float = 180.0,
) -> ShadowRun:
    """Scenario (c) on a running worker (images and events agents); ``running(role)`` says which version its
    images pipeline runs as ``champion``, ``shadow`` or ``canary`` now.

    The shuffled head is registered (not promoted) and made the shadow of version 1; ``images`` digits stream
    with labels for two in three; every label must judge both versions. Then the shadow ends and the head serves
    ``fraction`` of the ids as the canary for ``canary_images`` more digits; the roles are cleared at the end."""
    from streamdl.streams.jobs.retrain import announce_role
    from streamdl.streams.pipelines.roles import CANARY, SHADOW, in_canary, shadow_index
    from streamdl.streams.quality.windows import live_quality

    name = settings.model_name
    registry = base_registry(settings)
    es, stream = es_client(settings), DigitStream(settings, "shadow", say, timeout)
    stream.forget_earlier_runs(es)
    bad = register_shuffled_head(settings, registry)

    def role(r: str, version: str | None, share: float = 0.0) -> float:
        registry.set_role(name, r, version, share)
        announce_role(settings, name, r, version, share)
        return time.monotonic()

    announced = role(SHADOW, bad)
    say(f"   version {bad} (shuffled labels) registered and made the shadow of version 1; announced")
    stream.until(f"version {bad} as the shadow", lambda: running(SHADOW) == bad, nudge=True)
    seconds_to_shadow = time.monotonic() - announced
    sent = stream.send(range(images))
    last_sent = time.monotonic()
    stream.until(
        "the labels of both versions", lambda: min(joined(es, settings, v) for v in ("1", bad)) >= sent, nudge=False
    )
    seconds_to_judged = time.monotonic() - last_sent
    reports = live_quality(es, labels_alias(settings), "all", None, time.time())
    es.indices.refresh(index=shadow_index(settings))
    shadow_query = {"prefix": {"image_id": "shadow-"}}
    shadow_indexed = int(es.count(index=shadow_index(settings), query=shadow_query)["count"])
    say(f"   {sent} labels judged version 1 and the shadow {bad}")

    role(SHADOW, None)
    canary_at = time.time()
    announced = role(CANARY, bad, fraction)
    stream.until(f"version {bad} as the canary", lambda: running(CANARY) == bad and running(SHADOW) is None, nudge=True)
    seconds_to_canary = time.monotonic() - announced
    ids = [stream.id(i) for i in range(images, images + canary_images)]
    stream.send(range(images, images + canary_images))
    alias = settings.alias("images")

    def indexed() -> int:
        es.indices.refresh(index=alias)
        return int(es.count(index=alias, query={"ids": {"values": ids}})["count"])

    stream.until("the canary phase's digits indexed", lambda: indexed() >= len(ids))
    found = es.search(
        index=alias,
        query={"bool": {"filter": [{"ids": {"values": ids}}, {"term": {"model_version": bad}}]}},
        source=False,
        size=len(ids),
    )["hits"]["hits"]
    role(CANARY, None)
    es.close()
    return ShadowRun(
        version=bad,
        seconds_to_shadow=seconds_to_shadow,
        images=images,
        labels_sent=sent,
        seconds_to_judged=seconds_to_judged,
        joined={r.model_version: r.labelled for r in reports},
        accuracy={r.model_version: r.accuracy for r in reports},
        shadow_indexed=shadow_indexed,
        fraction=fraction,
        canary_at=canary_at,
        seconds_to_canary=seconds_to_canary,
        canary_images=canary_images,
        canary_served=sorted(h["_id"] for h in found),
        canary_expected=sorted(i for i in ids if in_canary(i, fraction)),
    )
