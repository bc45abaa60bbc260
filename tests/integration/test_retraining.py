"""The learning loop end to end: archive → Beam retraining → MLflow registry → promotion → hot-swap.

Real Kafka and Elasticsearch, a real worker and a real archiver process, Beam's DirectRunner and
MLflow on a SQLite file of the test's own. The digits stream in two halves; label events cover
two thirds of the first half; a retraining run registers, promotes and announces version 2
while the second half streams, and the running worker switches to it with every image indexed
and predicted exactly once.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from sklearn.datasets import load_digits

from streamdl.connectors.archive import archive_root
from streamdl.connectors.archive_reader import archive_status
from streamdl.connectors.es_client import es_client
from streamdl.connectors.kafka_producer import produce_all
from streamdl.infra.process import free_port
from streamdl.models.digits import digit_id, digit_to_png
from streamdl.models.registry import Registry
from streamdl.records import to_json
from streamdl.settings import settings_env
from streamdl.streams.agents.worker_process import WorkerProcess
from streamdl.streams.jobs.retrain import TooFewLabels, retrain, retrain_lock
from tests.integration.polling import wait

pytestmark = pytest.mark.integration

FIRST_HALF = 900
TOTAL = 1797
AFTER = 20
"""Images published once the worker serves version 2."""


@pytest.fixture(scope="module")
def loop(stream_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("retraining")
    with stream_factory(
        folder / "worker.log",
        worker_agents="images",
        similarity_alerts=False,
        max_batch_size=64,
        max_batch_duration_secs=0.2,
        mlflow_tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        archive_url=str(folder / "archive"),
        archive_max_file_secs=1.0,
        retrain_tolerance=0.05,
        retrain_min_labels=100,
    ) as (settings, worker):
        archiver = WorkerProcess(
            settings.model_copy(update={"archive_metrics_port": free_port()}),
            folder / "archiver.log",
            command=("archive", "run"),
        ).start()
        try:
            yield settings, worker, archiver
        finally:
            archiver.stop()


def label_event(i: int, label: str, ts: float) -> tuple[str, bytes, list]:
    event = {"id": f"label-{digit_id(i)}-{ts}", "ts": ts, "type": "label", "image_id": digit_id(i), "label": label}
    return event["id"], to_json(event), []


def publish_digits(settings, indices) -> None:
    digits = load_digits()
    produce_all(
        settings,
        settings.topic("images"),
        [(digit_id(i), digit_to_png(digits.data[i]), [("source", b"test")]) for i in indices],
        timeout=120,
    )


def stream_second_half(settings, swapped: threading.Event, fillers: list[str]) -> None:
    """Ten images a second until the swap, the rest at once after it. A version is swapped in at the start of
    the next micro-batch, so when the digits run out before the swap (a slow retraining on a loaded machine),
    one more image a second keeps batches coming; their ids go to ``fillers``."""
    digits = load_digits()
    for start in range(FIRST_HALF, TOTAL, 10):
        publish_digits(settings, range(start, min(start + 10, TOTAL)))
        if not swapped.is_set():
            time.sleep(1.0)
    while not swapped.wait(1.0):
        fillers.append(f"filler-{len(fillers)}")
        produce_all(settings, settings.topic("images"), [(fillers[-1], digit_to_png(digits.data[len(fillers)]), [])])


def archived_rows(settings, topic: str) -> int:
    return sum(s.rows for s in archive_status(archive_root(settings), [settings.topic(topic)]))


def test_retraining_promotes_a_version_and_the_running_worker_swaps_to_it(loop, read_topic):
    settings, worker, archiver = loop
    digits = load_digits()
    now = time.time()
    publish_digits(settings, range(FIRST_HALF))
    labelled = [i for i in range(FIRST_HALF) if i % 3]
    produce_all(settings, settings.topic("events"), [label_event(i, str(digits.target[i]), now) for i in labelled])
    wait(
        "the first half archived",
        lambda: archived_rows(settings, "images") >= FIRST_HALF and archived_rows(settings, "events") >= len(labelled),
        alive=(worker, archiver),
    )

    swapped, fillers = threading.Event(), []
    streaming = threading.Thread(target=stream_second_half, args=(settings, swapped, fillers))
    streaming.start()  # the second half streams while the model is retrained and swapped
    result = retrain(settings, say=print)
    wait(
        "the worker serving version 2",
        lambda: worker.metric("streamdl_model_loaded", "version", stream="images").get("2") == 1.0,
        timeout=120,
        alive=(worker,),
    )
    swapped.set()
    streaming.join()
    produce_all(
        settings,
        settings.topic("images"),
        [(f"after-swap-{i}", digit_to_png(digits.data[i]), []) for i in range(AFTER)],
    )
    total = TOTAL + AFTER + len(fillers)

    print(
        f"\nretrain: {result.status} v{result.version}: {result.reason}; "
        f"stages {result.seconds}; counters {result.counters}"
    )
    assert result.status == "promoted" and result.version == "2", result
    assert result.counters["labelled_images"] == len(labelled) and result.counters.get("corrupt_files", 0) == 0
    registry = Registry.from_settings(settings)
    v2 = registry.show(settings.model_name, "2")
    assert (
        v2.champion and v2.kind == "head" and v2.metrics["test_accuracy"] >= result.metrics["current_accuracy"] - 0.05
    )
    run = registry.client.get_run(v2.run_id)
    assert run.data.params["arch"] in ("softmax", "mlp") and run.data.tags["git_commit"]
    assert {"confusion.png", "search.json", "head"} <= {a.path for a in registry.client.list_artifacts(v2.run_id)}
    # both versions carry a drift reference (docs/model-quality.md): v1 its held-out digits, v2 its validation split
    base, head = registry.reference(settings.model_name, "1"), registry.reference(settings.model_name, "2")
    assert base["n"] == 360 and 0 < head["n"] < result.counters["labelled_images"]
    assert (
        len(head["reservoir"]) == min(head["n"], settings.drift_reservoir_size)
        and sum(head["classes"].values()) == head["n"]
    )
    updates = read_topic(settings, settings.topic("model-updates"), lambda got: len(got) >= 1, timeout=30)
    assert [json.loads(m.value())["version"] for m in updates] == ["2"]

    es = es_client(settings)
    alias = settings.alias("images")

    def indexed() -> int:
        es.indices.refresh(index=alias)
        return es.count(index=alias)["count"]

    wait("every image indexed", lambda: indexed() >= total, alive=(worker,))
    predictions = read_topic(
        settings, settings.topic("predictions"), lambda got: len(got) >= total, timeout=120, settle=3
    )
    keys = Counter(m.key() for m in predictions)
    versions = Counter(json.loads(m.value())["model_version"] for m in predictions)
    print(f"predictions by version: {dict(versions)}")
    assert len(keys) == total and set(keys.values()) == {1}, "an image was lost or scored twice"
    assert set(versions) == {"1", "2"}
    assert {json.loads(m.value())["model_version"] for m in predictions if m.key().startswith(b"after-swap-")} == {"2"}
    by_partition: dict[int, list[str]] = {}
    for m in sorted(predictions, key=lambda m: (m.partition(), m.offset())):
        by_partition.setdefault(m.partition(), []).append(json.loads(m.value())["model_version"])
    for seq in by_partition.values():  # once a partition saw version 2, it never goes back
        assert "1" not in seq[seq.index("2") :] if "2" in seq else True
    assert indexed() == total
    docs = es.search(index=alias, size=0, aggs={"v": {"terms": {"field": "model_version"}}})["aggregations"]["v"][
        "buckets"
    ]
    assert {b["key"] for b in docs} == {"1", "2"} and sum(b["doc_count"] for b in docs) == total
    assert worker.metric("streamdl_model_loaded", "version", stream="images").get("2") == 1.0


def test_a_worse_model_is_registered_but_not_promoted(loop):
    settings, worker, archiver = loop
    rng = random.Random(0)
    later = time.time()
    labelled = [i for i in range(FIRST_HALF) if i % 3]
    shuffled = [str(d) for d in load_digits().target[labelled]]
    rng.shuffle(shuffled)
    before = archived_rows(settings, "events")
    produce_all(
        settings, settings.topic("events"), [label_event(i, label, later) for i, label in zip(labelled, shuffled)]
    )
    wait(
        "the shuffled labels archived",
        lambda: archived_rows(settings, "events") >= before + len(labelled),
        alive=(archiver,),
    )
    result = retrain(settings, say=print)
    print(f"\nshuffled labels: {result.status} v{result.version}: {result.reason}")
    assert result.status == "registered" and "below the current version" in result.reason
    registry = Registry.from_settings(settings)
    assert registry.champion(settings.model_name).version == "2"
    refused = registry.show(settings.model_name, result.version)
    assert not refused.promoted and "below" in refused.tags["not_promoted"]


def test_a_periodic_run_is_skipped_when_no_label_arrived(loop):
    settings, _, _ = loop
    result = retrain(settings, skip_unchanged=True, say=print)
    assert result.status == "skipped" and "no new labels" in result.reason and result.version is None


def test_too_few_labels_stop_early_saying_how_many(loop):
    settings, _, _ = loop
    with pytest.raises(TooFewLabels, match=r"found \d+ labelled images .* at least 100000"):
        retrain(settings.model_copy(update={"retrain_min_labels": 100_000}), say=print)


def test_a_second_run_says_the_first_is_running(loop, tmp_path):
    settings, _, _ = loop
    with retrain_lock(settings.state_dir):
        env = {**settings_env(settings), "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [sys.executable, "-m", "streamdl", "retrain"], env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 4, done.stderr[-2000:]  # EXIT_BUSY, apart from 3 (a service did not answer)
    assert "another retraining run is in progress (pid" in done.stderr


def test_a_version_that_cannot_load_is_refused_with_an_alert(loop, read_topic):
    settings, worker, _ = loop
    produce_all(
        settings,
        settings.topic("model-updates"),
        [(settings.model_name, to_json({"name": settings.model_name, "version": "99"}), [])],
    )
    alerts = read_topic(
        settings,
        settings.topic("alerts"),
        lambda got: any(json.loads(m.value())["rule"] == "model_refused" for m in got),
        timeout=60,
    )
    refused = [json.loads(m.value()) for m in alerts if json.loads(m.value())["rule"] == "model_refused"]
    assert refused and refused[0]["evidence"]["refused_version"] == "99" and refused[0]["severity"] == "critical"
    assert worker.alive and worker.metric("streamdl_model_loaded", "version", stream="images").get("2") == 1.0
