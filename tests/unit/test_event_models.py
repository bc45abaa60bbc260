"""Event preprocessing, the Keras event models, their registry and handler (no services)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from streamdl.models.errors import ModelNotFound
from streamdl.models.event_features import UNKNOWN, EventFeatures, EventRecord
from streamdl.models.event_handler import EventModelHandler, load_event_handler
from streamdl.models.event_models import (
    DEFAULT_ANOMALY_THRESHOLD,
    DEFAULT_EVENT_MODEL,
    event_models,
    model_versions,
    train_event_model,
)
from streamdl.models.sensor_sample import QUIET_DAYS, score_detections, sensor_anomalies, sensor_events

pytestmark = pytest.mark.filterwarnings(  # raised inside keras' model.save with numpy 2, not by streamdl
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
RNG = np.random.default_rng(3)
NOON = 1_767_614_400.0  # 2026-01-05T12:00:00Z


def _records(n: int, *, shift: float = 0.0, rng: np.random.Generator = RNG) -> list[EventRecord]:
    return [
        EventRecord(
            NOON + 60 * i,
            {"a": float(rng.normal(shift, 1)), "b": float(rng.normal(2 * shift, 1)), "c": 5.0},
            {"colour": str(rng.choice(["red", "green"]))},
        )
        for i in range(n)
    ]


# --- Fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("event-state")


@pytest.fixture(scope="module")
def sensors(state_dir: Path) -> EventModelHandler:
    """The default ``sensors-ae``, trained once for this module."""
    handler = load_event_handler(DEFAULT_EVENT_MODEL, state_dir)
    started = time.perf_counter()
    handler.load()
    print(f"\n{DEFAULT_EVENT_MODEL} trained and loaded in {time.perf_counter() - started:.1f}s")
    return handler


@pytest.fixture(scope="module")
def classifier(state_dir: Path) -> tuple[EventModelHandler, list[EventRecord], list[str]]:
    rng = np.random.default_rng(5)
    records = _records(200, shift=0, rng=rng) + _records(200, shift=3, rng=rng)
    labels = ["normal"] * 200 + ["fault"] * 200
    folder = train_event_model(records, kind="classifier", name="faults", state_dir=state_dir, labels=labels, epochs=20)
    handler = load_event_handler("faults", state_dir)
    handler.load()
    assert handler.folder == folder
    return handler, records, labels


# --- Features --------------------------------------------------------------------------------------
def test_features_standardise_flag_missing_and_one_hot() -> None:
    train = _records(100) + [EventRecord(NOON, {"a": None, "b": 1.0}, {"colour": None})]
    features = EventFeatures().fit(train)
    x = features.transform(train)
    names = features.feature_names
    assert names[:6] == ["num:a", "num:b", "num:c", "missing:a", "missing:b", "missing:c"]
    assert names[6:] == [
        "cat:colour=green",
        "cat:colour=red",
        f"cat:colour={UNKNOWN}",
        "time:hour_sin",
        "time:hour_cos",
    ]
    assert x.dtype == np.float32 and x.shape == (101, len(names))
    a = x[:100, 0]
    assert abs(a.mean()) < 0.05 and abs(a.std() - 1) < 0.05
    assert features.scale[2] == 1.0 and np.all(x[:100, 2] == 0)  # a constant feature keeps scale 1
    assert x[100, 0] == 0 and x[100, 3] == 1 and x[100, 5] == 1  # None and absent are missing
    assert x[100, 6:9].sum() == 0  # a missing category sets no column
    assert x[0, 9] == pytest.approx(0, abs=1e-6) and x[0, 10] == pytest.approx(-1)  # noon

    odd = features.transform([EventRecord(NOON, {"a": float("nan"), "zzz": 3.0}, {"colour": "purple", "new": "x"})])
    assert odd[0, 3] == 1 and odd[0, 8] == 1 and odd[0, 6:8].sum() == 0  # unknown, never an error
    assert odd.shape == (1, len(names))


def test_features_round_trip_through_json_and_keep_rare_values_out() -> None:
    train = _records(50) + [EventRecord(NOON, {"a": 1.0}, {"colour": "blue"})]
    features = EventFeatures(min_count=2).fit(train)
    assert features.categories == {"colour": ["green", "red"]}  # "blue" was seen once
    again = EventFeatures.from_json(features.to_json())
    probe = train + [EventRecord(NOON + 7, {"b": 4.0}, {"colour": "blue"})]
    assert np.array_equal(again.transform(probe), features.transform(probe))
    assert again.feature_names == features.feature_names
    without_time = EventFeatures(time_of_day=False).fit(train)
    assert not any(n.startswith("time:") for n in without_time.feature_names)
    with pytest.raises(ValueError, match="not a saved EventFeatures"):
        EventFeatures.from_json('{"format": 1}')
    with pytest.raises(RuntimeError, match="fit"):
        EventFeatures().transform(train)


def test_records_come_from_tuples_events_and_json() -> None:
    expected = EventRecord(NOON, {"a": 1.0}, {"k": "v"})
    assert EventRecord.of((NOON, {"a": 1.0}, {"k": "v"})) == expected
    assert EventRecord.of(SimpleNamespace(ts=NOON, numeric={"a": 1.0}, categorical={"k": "v"})) == expected
    assert EventRecord.of({"ts": "2026-01-05T12:00:00Z", "numeric": {"a": 1.0}, "categorical": {"k": "v"}}) == expected
    assert EventRecord.of({"ts": NOON}) == EventRecord(NOON, {}, {})
    with pytest.raises(TypeError, match="a record is"):
        EventRecord.of(42)


# --- The default anomaly model ------------------------------------------------------------------
def test_the_default_model_finds_the_sample_anomalies(sensors: EventModelHandler) -> None:
    info = sensors.info()
    assert (info.name, info.version, info.kind, info.threshold) == (
        DEFAULT_EVENT_MODEL,
        "1",
        "autoencoder",
        DEFAULT_ANOMALY_THRESHOLD,
    )
    assert info.extra["train_records"] == 6 * QUIET_DAYS * 1440 and info.extra["train_seconds"] < 120
    events = list(sensor_events())[6 * QUIET_DAYS * 1440 :]  # the days after the training days
    records = [EventRecord.of(e) for e in events]
    scores = np.concatenate([sensors.score_batch(records[i : i + 1000]).anomaly for i in range(0, len(records), 1000)])
    assert scores.shape == (len(records),) and np.all(np.isfinite(scores))
    flagged = [(r.categorical["machine"], r.ts) for r, s in zip(records, scores) if s > info.threshold]
    score = score_detections(flagged, sensor_anomalies())
    print(f"\n{DEFAULT_EVENT_MODEL} at threshold {info.threshold}: {score}")
    assert score.recall > 0.8 and score.precision > 0.5
    assert np.median(scores) < 0.5  # most readings are plainly normal
    training = sensors.score_batch(list(sensor_events(days=QUIET_DAYS))[:6000]).anomaly
    assert 0.001 < (training > 1).mean() < 0.015  # scores are errors over the training errors' 99.5% quantile


def test_batches_of_any_size_agree_and_never_retrace(sensors: EventModelHandler) -> None:
    records = [EventRecord.of(e) for e in sensor_events(days=0.05)][:360]
    whole = sensors.score_batch(records).anomaly
    parts = np.concatenate(
        [sensors.score_batch(records[i : i + n]).anomaly for i, n in ((0, 1), (1, 7), (8, 300), (308, 52))]
    )
    assert np.allclose(whole, parts, atol=1e-5)
    assert sensors.score_batch([]).anomaly.shape == (0,) and sensors.score_batch([]).probabilities is None
    out: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: out.append(sensors.score_batch(records[:10]).anomaly))
    worker.start()
    worker.join()
    assert np.allclose(out[0], whole[:10], atol=1e-5)
    assert sensors.trace_count == 1


def test_the_pipeline_serializes_each_document_once_and_the_bulk_sends_those_bytes(sensors: EventModelHandler) -> None:
    """Event documents are final once computed: serialized on the compute thread, sent as they are."""
    from streamdl.connectors.es_bulk import encode
    from streamdl.records import InMessage, to_json
    from streamdl.settings import Settings
    from streamdl.streams.pipelines.events import EventPipeline

    pipeline = EventPipeline(Settings(), sensors)
    pipeline.info = sensors.info()
    events = [{**e, "id": f"e{i}"} for i, e in enumerate(itertools.islice(sensor_events(), 3))]
    events.append({"id": "l0", "ts": events[0]["ts"], "type": "label", "image_id": "img-1", "label": "7"})
    computed = pipeline.compute([InMessage(None, to_json(e), "events", 0, i) for i, e in enumerate(events)])
    assert [d.id for d in computed.documents] == ["e0", "e1", "e2", "l0"] and not computed.dead
    for doc in computed.documents:
        assert doc.json is not None and json.loads(doc.json) == doc.body
        assert encode("i", doc.id, doc.json) == encode("i", doc.id, doc.body)
    assert "anomaly_score" in computed.documents[0].body and "anomaly_score" not in computed.documents[3].body
    assert set(computed.seconds) == {"validate", "model", "documents"} and all(computed.seconds.values())


def test_the_default_model_is_cached(sensors: EventModelHandler, state_dir: Path) -> None:
    again = load_event_handler(f"{DEFAULT_EVENT_MODEL}:1", state_dir)
    started = time.perf_counter()
    again.load()
    assert time.perf_counter() - started < 10 and again.folder == sensors.folder
    assert event_models(state_dir)[DEFAULT_EVENT_MODEL] == ["1"]


# --- Classifier -----------------------------------------------------------------------------------
def test_the_classifier_learns_a_separable_set(classifier) -> None:
    handler, records, labels = classifier
    info = handler.info()
    assert (info.kind, info.labels, info.threshold) == ("classifier", ("fault", "normal"), None)
    assert info.extra["metrics"]["holdout_accuracy"] > 0.9
    rng = np.random.default_rng(99)
    fresh = _records(100, shift=0, rng=rng) + _records(100, shift=3, rng=rng)
    scores = handler.score_batch(fresh)
    assert scores.anomaly is None and scores.probabilities.shape == (200, 2)
    assert np.allclose(scores.probabilities.sum(axis=1), 1, atol=1e-5)
    predicted = np.array(info.labels)[scores.probabilities.argmax(axis=1)]
    assert (predicted == np.array(["normal"] * 100 + ["fault"] * 100)).mean() > 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "classifier"}, "needs labels"),
        ({"kind": "classifier", "labels": ["x"] * 64}, "at least 2 distinct labels"),
        ({"kind": "classifier", "labels": ["x", "y"]}, "one entry per record"),
        ({"kind": "classifier", "labels": ["x", "y"] * 8, "n": 16}, "at least 32 records"),
        ({"kind": "autoencoder", "labels": ["x", "y"] * 32}, "without labels"),
        ({"kind": "forest"}, "kind must be one of"),
        ({"kind": "autoencoder", "name": "no/slash"}, "model name"),
    ],
)
def test_training_refuses_what_it_cannot_learn(tmp_path: Path, kwargs: dict, message: str) -> None:
    n = kwargs.pop("n", 64)
    kwargs.setdefault("name", "bad")
    with pytest.raises(ValueError, match=message):
        train_event_model(_records(n), state_dir=tmp_path, **kwargs)
    assert model_versions("bad", tmp_path) == [] and not list((tmp_path / "models").glob("*/.training-*"))


# --- Registry ------------------------------------------------------------------------------------
def test_versions_increment_and_load_by_reference(tmp_path: Path) -> None:
    records = _records(64)
    first = train_event_model(records, kind="autoencoder", name="tiny", state_dir=tmp_path, epochs=2)
    second = train_event_model(records, kind="autoencoder", name="tiny", state_dir=tmp_path, epochs=2)
    assert (first.name, second.name) == ("1", "2") and model_versions("tiny", tmp_path) == ["1", "2"]
    saved = json.loads((second / "info.json").read_text())
    assert (
        saved["version"] == "2" and saved["kind"] == "autoencoder" and saved["threshold"] == DEFAULT_ANOMALY_THRESHOLD
    )
    assert {"train_records", "metrics", "versions", "seed", "train_seconds"} <= set(saved)
    assert sorted(p.name for p in first.iterdir()) == ["features.json", "info.json", "model.keras"]
    latest, pinned = load_event_handler("tiny", tmp_path), load_event_handler("tiny:1", tmp_path)
    latest.load()
    pinned.load()
    assert (latest.info().version, pinned.info().version) == ("2", "1")
    one = latest.score_batch(records).anomaly
    assert np.allclose(one, pinned.score_batch(records).anomaly, atol=1e-5)  # deterministic training


def test_unknown_models_and_versions_say_what_exists(tmp_path: Path) -> None:
    train_event_model(_records(64), kind="autoencoder", name="known", state_dir=tmp_path, epochs=1)
    with pytest.raises(ModelNotFound, match=r"'nope'.*known \(versions 1\)"):
        load_event_handler("nope", tmp_path)
    with pytest.raises(ModelNotFound, match="no version 7; its versions: 1"):
        load_event_handler("known:7", tmp_path)
    with pytest.raises(ModelNotFound):
        load_event_handler(f"{DEFAULT_EVENT_MODEL}:2", tmp_path)
    for bad in ("", "known:", "known:x", "known:01", "a:b:c", ":1"):
        with pytest.raises(ValueError):
            load_event_handler(bad, tmp_path)
    with pytest.raises(RuntimeError, match="load"):
        load_event_handler("known", tmp_path).score_batch([])
