"""The compute stage of the image pipeline with a fake model: no broker, no Elasticsearch."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from streamdl.models.handler import BatchResult, ModelInfo
from streamdl.records import DeadLetter, InMessage, parse_dead_letter_headers
from streamdl.settings import load_settings
from streamdl.streams.pipelines.images import ImagePipeline

INFO = ModelInfo(name="fake", version="7", input_size=(8, 8), channels=1, embedding_size=3, labels=("dark", "light"))


class FakeHandler:
    """Embedding = (mean, min, max) of the pixels; 'light' when the mean is over 127. Fails on all-255 images."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def load(self) -> None: ...

    def info(self) -> ModelInfo:
        return INFO

    def predict_batch(self, images: np.ndarray) -> BatchResult:
        self.calls.append(len(images))
        flat = images.reshape(len(images), -1).astype(np.float32)
        if (flat == 255).all(axis=1).any():
            raise RuntimeError("poisoned image")
        mean = flat.mean(axis=1)
        light = (mean > 127).astype(np.float32)
        return BatchResult(np.stack([mean, flat.min(1), flat.max(1)], 1), np.stack([1 - light, light], 1))


def png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def msg(key: bytes | None, value: bytes, offset: int, **headers: str) -> InMessage:
    return InMessage(
        key=key,
        value=value,
        topic="t.images",
        partition=0,
        offset=offset,
        timestamp_ms=1_700_000_000_000,
        headers={k: v.encode() for k, v in headers.items()},
    )


@pytest.fixture
def pipeline() -> ImagePipeline:
    settings = load_settings({"max_message_bytes": 5000, "top_k": 2}, env_file=None)
    p = ImagePipeline(settings, FakeHandler())
    p.info = INFO
    return p


def test_good_images_become_documents_and_predictions_in_one_model_call(pipeline):
    batch = [msg(f"img-{i}".encode(), png(i * 50), i, label="x", source="test") for i in range(5)]
    out = pipeline.compute(batch)
    assert pipeline.handler.calls == [5]
    assert [d.id for d in out.documents] == [f"img-{i}" for i in range(5)]
    doc = {d.id: d.body for d in out.documents}["img-4"]
    assert doc["label"] == "light" and doc["model_name"] == "fake" and doc["model_version"] == "7"
    assert list(doc["embedding"]) == pytest.approx([200.0, 200.0, 200.0])
    assert doc["kafka"] == {"topic": "t.images", "partition": 0, "offset": 4} and doc["true_label"] == "x"
    assert doc["thumbnail"] and doc["event_time"].startswith("2023-11-14")
    prediction = json.loads(out.predictions["img-0"])
    assert prediction["label"] == "dark" and [t["label"] for t in prediction["top_k"]] == ["dark", "light"]
    assert not out.dead
    assert set(out.seconds) == {"decode", "model", "documents"} and all(out.seconds.values())


def test_bad_input_becomes_dead_letters_and_the_rest_goes_on(pipeline):
    batch = [
        msg(b"ok-1", png(10), 0),
        msg(b"empty", b"", 4),
        msg(b"big", b"\x89PNG" + b"\0" * 6000, 5),
        msg(b"text", b"plain text", 6),
        msg(b"ok-2", png(240), 7),
    ]
    out = pipeline.compute(batch)
    assert [d.id for d in out.documents] == ["ok-1", "ok-2"]
    reasons = {d.message.offset: d.code for d in out.dead}
    assert reasons == {4: "empty", 5: "too_large", 6: "not_an_image"}
    assert all(d.reason and d.stage == "decode" for d in out.dead)


def test_images_without_a_usable_key_get_a_stable_id_instead_of_a_dead_letter(pipeline):
    """What kcat, Kafka Connect or a camera gateway send: no key, a blank one, one that is not UTF-8 or too long."""
    from streamdl.connectors.image_producer import ImageItem

    batch = [
        msg(None, png(10), 0),
        msg(b"   ", png(20), 1),
        msg(b"\xff\xfe\x00bad", png(30), 2),
        msg(b"x" * 600, png(40), 3),
    ]
    out = pipeline.compute(batch)
    assert not out.dead
    ids = [d.id for d in out.documents]
    producer_id, _, _ = ImageItem(png(10), source="cam").message()  # the id `streamdl produce` gives the same bytes
    assert ids[0] == producer_id and ids[1] == ImageItem(png(20), source="cam").message()[0]
    assert ids[2].startswith("key-") and ids[3].startswith("key-") and ids[2] != ids[3]
    assert [d.id for d in pipeline.compute(batch).documents] == ids  # a replay gets the same ids


def test_an_image_that_breaks_the_model_is_isolated(pipeline):
    batch = [msg(b"a", png(10), 0), msg(b"poison", png(255), 1), msg(b"b", png(200), 2)]
    out = pipeline.compute(batch)
    assert pipeline.handler.calls == [3, 1, 1, 1]  # the batch, then one by one
    assert [d.id for d in out.documents] == ["a", "b"]
    assert [(d.message.key, d.code) for d in out.dead] == [(b"poison", "model_error")]


def test_the_same_id_twice_in_a_batch_keeps_the_later_message(pipeline):
    out = pipeline.compute([msg(b"same", png(10), 0), msg(b"same", png(250), 1)])
    assert len(out.documents) == 1
    assert out.documents[0].body["kafka"]["offset"] == 1 and out.documents[0].body["label"] == "light"


def test_dead_letter_keeps_the_original_and_says_where_it_came_from():
    original = msg(b"k", b"\x00\x01", 42, source="cam-1", **{"dlq.reason": "stale"})
    key, value, headers = DeadLetter(original, "corrupt", "bad bytes", "decode").to_kafka()
    info = parse_dead_letter_headers(headers)
    assert (key, value) == (b"k", b"\x00\x01")
    assert ("source", b"cam-1") in headers
    assert info["reason_code"] == "corrupt" and info["reason"] == "bad bytes" and info["stage"] == "decode"
    assert (info["source.topic"], info["source.partition"], info["source.offset"]) == ("t.images", "0", "42")


class Versioned(FakeHandler):
    """The fake model under another version number."""

    def __init__(self, version: str) -> None:
        super().__init__()
        self.version = version

    def info(self) -> ModelInfo:
        return dataclasses.replace(INFO, version=self.version)


def test_a_rollback_announced_while_the_promoted_version_waits_wins(pipeline):
    """promote 2, then roll back to 1 before any image arrives: the worker must keep serving version 1."""
    from streamdl.streams.agents.hot_swap import ModelFollower

    pipeline.handler = Versioned("1")
    pipeline.info = pipeline.handler.info()
    follower = ModelFollower(pipeline.settings, pipeline, load=lambda settings, version: Versioned(version))
    follower.handle(json.dumps({"name": pipeline.settings.model_name, "version": "2"}).encode())
    follower.handle(json.dumps({"name": pipeline.settings.model_name, "version": "1"}).encode())
    out = pipeline.compute([msg(b"a", png(10), 0)])
    assert out.documents[0].body["model_version"] == "1" and pipeline.info.version == "1"


def test_a_later_promotion_replaces_a_candidate_still_waiting(pipeline):
    from streamdl.streams.agents.hot_swap import ModelFollower

    pipeline.handler = Versioned("1")
    pipeline.info = pipeline.handler.info()
    follower = ModelFollower(pipeline.settings, pipeline, load=lambda settings, version: Versioned(version))
    for version in ("2", "3"):
        follower.handle(json.dumps({"name": pipeline.settings.model_name, "version": version}).encode())
    assert pipeline.compute([msg(b"a", png(10), 0)]).documents[0].body["model_version"] == "3"
    follower.handle(json.dumps({"name": pipeline.settings.model_name, "version": "1"}).encode())
    assert pipeline.compute([msg(b"a", png(10), 1)]).documents[0].body["model_version"] == "1"
