"""The Python API against the real local Kafka and Elasticsearch: index_folder (resumable, the worker's
documents), similar and contact_sheet on that index, publish_images / publish_events and read_topic, and
Head.register into an MLflow registry of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamdl.connectors.image_producer import iter_digits
from streamdl.records import content_id
from streamdl.settings import Settings
from streamdl.streams.api import (
    ImageFeaturizer,
    contact_sheet,
    fit_head,
    index_folder,
    publish_events,
    publish_images,
    read_images,
    read_topic,
    similar,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def api(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings with topics, indices and a registry of this test's own; removed afterwards."""
    from streamdl.connectors.es_client import es_client
    from streamdl.connectors.kafka_admin import admin_client
    from streamdl.connectors.setup import init_all

    tag = f"t{uuid.uuid4().hex[:8]}"
    settings = stack.model_copy(
        update={
            "topic_prefix": f"{tag}.",
            "index_prefix": f"{tag}-",
            "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
            "max_batch_size": 16,
        }
    )
    (tmp_path / "mlflow").mkdir()
    init_all(settings)
    yield settings
    es_client(settings).options(ignore_status=404).indices.delete(index=f"{tag}-*")
    admin = admin_client(settings)
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tag)]
    if topics:
        admin.delete_topics(topics, operation_timeout=30)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """40 digit PNGs in folders by label, and one file that is not an image."""
    root = tmp_path / "digits"
    for item in iter_digits(40):
        (root / item.label).mkdir(parents=True, exist_ok=True)
        (root / item.label / f"{item.image_id}.png").write_bytes(item.data)
    (root / "0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def test_index_folder_writes_the_workers_documents_and_resumes(api: Settings, folder: Path, es):
    report = index_folder(folder, progress=False, settings=api)
    assert (report.files, report.indexed, report.already) == (41, 40, 0)
    assert sum(report.refused.values()) == 1 and "broken.png" in report.examples[0]
    assert "indexed 40 of 41 files" in report.summary()

    some = next((folder / "3").glob("digits-*.png"))
    doc = es.get(index=api.alias("images"), id=content_id(some.read_bytes()))["_source"]
    assert doc["image_id"] == content_id(some.read_bytes()) and doc["source"] == str(some)
    assert doc["model_name"] == "digits-cnn" and doc["label"] == "3" and doc["thumbnail"]
    assert len(doc["embedding"]) == 64 and doc["content_type"] == "image/png" and doc["kafka"]["topic"] == "file"

    again = index_folder(folder, progress=False, settings=api)  # resumable: nothing is featurized twice
    assert (again.indexed, again.already) == (0, 40)

    by_id = similar(doc["image_id"], k=5, settings=api)
    assert len(by_id.neighbours) == 5 and doc["image_id"] not in [n.image_id for n in by_id.neighbours]
    by_image = similar(some, k=3, settings=api, label="3")
    assert by_image.neighbours[0].image_id == doc["image_id"] and by_image.neighbours[0].similarity > 0.99
    assert all(n.label == "3" for n in by_image.neighbours)
    sheet = contact_sheet(some.read_bytes(), k=5, settings=api)
    assert sheet.size[0] > 300 and sheet.mode == "RGB"
    with pytest.raises(Exception, match="unknown filter field 'colour'"):
        similar(doc["image_id"], settings=api, colour="red")


def test_publish_images_and_events_then_read_them_back(api: Settings, folder: Path):
    table = read_images(folder, label_from_folder=True, settings=api)
    report = publish_images(table, progress=False, settings=api)
    assert report.sent == 40 and len(report.skipped) == 1
    images = read_topic("images", settings=api)
    usable = sorted(row["id"] for row in table.to_pylist() if row["status"] == "ok")
    assert sorted(k.decode() for k in images["key"].to_pylist()) == usable
    headers = {h["key"]: h["value"] for h in images["headers"][0].as_py()}
    assert headers["source"].startswith(str(folder).encode()) and "label" in headers

    events = [
        {"id": "e-1", "ts": 1_700_000_000, "type": "sensor", "numeric": {"temperature": 20.5}},
        {"id": "e-2", "type": "sensor"},  # no time: refused by the event contract
    ]
    sent = publish_events(events, progress=False, settings=api)
    assert sent.sent == 1 and len(sent.skipped) == 1 and sent.skipped[0].source == "event 1"
    assert read_topic("events", settings=api)["key"].to_pylist() == [b"e-1"]
    assert read_topic("events", since="1h", settings=api).num_rows == 1  # broker time is now
    with pytest.raises(ValueError, match="unknown stream"):
        read_topic("photos", settings=api)


def test_a_head_registers_as_streamdl_retrain_does(api: Settings, folder: Path, read_topic):
    from streamdl.models.registry import Registry

    table = read_images(folder, label_from_folder=True, settings=api)
    head = fit_head(ImageFeaturizer("digits-cnn", settings=api), table, search="random", trials=1, progress=False)
    said: list[str] = []
    result = head.register(gate=False, say=said.append)
    assert result.status == "promoted" and result.version == "2"
    assert said and said[0].startswith("evaluate: test accuracy")
    registry = Registry.from_settings(api)
    champion = registry.champion("digits-cnn")
    assert champion.version == "2" and champion.kind == "head"
    assert (registry.head_folder(champion) / "head.keras").is_file()
    updates = read_topic(api, api.topic("model-updates"), until=lambda got: len(got) >= 1, timeout=30)
    assert updates[0].key() == b"digits-cnn"
    # the champion (the head) now indexes, into its featurizer's index; image queries still work
    report = index_folder(folder / "3", progress=False, settings=api)
    assert report.model_version == "2" and report.index.endswith("images-digits-cnn-1")
    some = next((folder / "3").glob("digits-*.png"))
    assert similar(some, k=2, settings=api).neighbours[0].similarity > 0.99


def test_the_cli_indexes_a_folder_through_the_same_function(api: Settings, folder: Path, capsys, es):
    from streamdl.streams.cli.main import main

    flags = ["--topic-prefix", api.topic_prefix, "--index-prefix", api.index_prefix, "--state-dir", str(api.state_dir)]
    assert main(["index", "folder", str(folder / "5"), *flags]) == 0
    out = capsys.readouterr().out
    files = len(list((folder / "5").glob("*.png")))
    assert f"indexed {files} of {files} files" in out and "already indexed 0" in out
    es.indices.refresh(index=api.alias("images"))
    assert es.count(index=api.alias("images"))["count"] == files
    assert main(["index", "folder", str(folder / "5"), *flags]) == 0
    assert f"indexed 0 of {files} files" in capsys.readouterr().out
