"""The compute stage of the image pipeline with a fake model: no broker, no Elasticsearch."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from streamdl.models.handler import BatchResult, ModelInfo
from streamdl.records import InMessage, dead_letter, parse_dead_letter_headers
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
    assert [doc_id for doc_id, _ in out.docs] == [f"img-{i}" for i in range(5)]
    doc = dict(out.docs)["img-4"]
    assert doc["label"] == "light" and doc["model_name"] == "fake" and doc["model_version"] == "7"
    assert doc["embedding"] == pytest.approx([200.0, 200.0, 200.0])
    assert doc["kafka"] == {"topic": "t.images", "partition": 0, "offset": 4} and doc["true_label"] == "x"
    assert doc["thumbnail"] and doc["event_time"].startswith("2023-11-14")
    prediction = json.loads(out.predictions["img-0"])
    assert prediction["label"] == "dark" and [t["label"] for t in prediction["top_k"]] == ["dark", "light"]
    assert not out.dead


def test_bad_input_becomes_dead_letters_and_the_rest_goes_on(pipeline):
    batch = [
        msg(b"ok-1", png(10), 0),
        msg(None, png(10), 1),
        msg(b"   ", png(10), 2),
        msg(b"x" * 600, png(10), 3),
        msg(b"empty", b"", 4),
        msg(b"big", b"\x89PNG" + b"\0" * 6000, 5),
        msg(b"text", b"plain text", 6),
        msg(b"ok-2", png(240), 7),
    ]
    out = pipeline.compute(batch)
    assert [d for d, _ in out.docs] == ["ok-1", "ok-2"]
    reasons = {m.offset: code for m, code, _, _ in out.dead}
    assert reasons == {
        1: "missing_key",
        2: "missing_key",
        3: "missing_key",
        4: "empty",
        5: "too_large",
        6: "not_an_image",
    }
    assert all(reason for _, _, reason, _ in out.dead)


def test_an_image_that_breaks_the_model_is_isolated(pipeline):
    batch = [msg(b"a", png(10), 0), msg(b"poison", png(255), 1), msg(b"b", png(200), 2)]
    out = pipeline.compute(batch)
    assert pipeline.handler.calls == [3, 1, 1, 1]  # the batch, then one by one
    assert [d for d, _ in out.docs] == ["a", "b"]
    assert [(m.key, code) for m, code, _, _ in out.dead] == [(b"poison", "model_error")]


def test_the_same_id_twice_in_a_batch_keeps_the_later_message(pipeline):
    out = pipeline.compute([msg(b"same", png(10), 0), msg(b"same", png(250), 1)])
    assert len(out.docs) == 1 and out.docs[0][1]["kafka"]["offset"] == 1 and out.docs[0][1]["label"] == "light"


def test_dead_letter_keeps_the_original_and_says_where_it_came_from():
    original = msg(b"k", b"\x00\x01", 42, source="cam-1", **{"dlq.reason": "stale"})
    key, value, headers = dead_letter(original, "corrupt", "bad bytes", "decode")
    info = parse_dead_letter_headers(headers)
    assert (key, value) == (b"k", b"\x00\x01")
    assert ("source", b"cam-1") in headers
    assert info["reason_code"] == "corrupt" and info["reason"] == "bad bytes" and info["stage"] == "decode"
    assert (info["source.topic"], info["source.partition"], info["source.offset"]) == ("t.images", "0", "42")
