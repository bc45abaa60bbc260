"""The Python API's tables and transforms (read_images, ImageFeaturizer, ImagePredictor, fit_head) on the
offline digits-cnn model: no broker, no index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

import streamdl
from streamdl.models.catalog import load_handler
from streamdl.models.decode import decode_image
from streamdl.models.errors import ModelNotFound
from streamdl.records import content_id
from streamdl.settings import Settings
from streamdl.streams.api import ImageFeaturizer, ImagePredictor, fit_head, read_images


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 digits (4 to 8 per class), a folder per label, plus a truncated PNG and a text file named .png."""
    from streamdl.connectors.image_producer import iter_digits

    root = tmp_path_factory.mktemp("digits")
    for item in iter_digits(60):
        (root / item.label).mkdir(exist_ok=True)
        (root / item.label / f"{item.image_id}.png").write_bytes(item.data)
    good = next((root / "1").glob("*.png")).read_bytes()
    (root / "1" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "7" / "notes.png").write_bytes(b"not an image at all")
    return root


def test_read_images_gives_one_row_per_file_with_the_producer_id_and_reasons(folder: Path, settings: Settings):
    table = read_images(folder, label_from_folder=True, settings=settings)
    assert table.num_rows == 62
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    some = next(p for p in (folder / "3").glob("digits-*.png"))
    assert rows[some.name]["id"] == content_id(some.read_bytes())
    assert rows[some.name]["status"] == "ok" and rows[some.name]["reason"] is None
    assert rows[some.name]["label"] == "3" and rows[some.name]["content_type"] == "image/png"
    assert rows["truncated.png"]["status"] in ("truncated", "corrupt") and rows["truncated.png"]["reason"]
    assert rows["notes.png"]["status"] == "not_an_image" and "not a recognised image" in rows["notes.png"]["reason"]


def test_read_images_takes_globs_and_refuses_a_path_with_no_images(folder: Path, settings: Settings):
    assert read_images(str(folder / "4" / "*.png"), settings=settings).num_rows == 4
    with pytest.raises(FileNotFoundError, match="no image files"):
        read_images(folder / "missing", settings=settings)


def test_the_featurizer_adds_the_handlers_embeddings_and_nulls_for_bad_rows(folder: Path, settings: Settings):
    table = read_images(folder, settings=settings)
    featurizer = ImageFeaturizer("digits-cnn", batch_size=16, settings=settings)
    out = featurizer.transform(table)
    ok = pc.equal(out["status"], "ok").to_numpy(zero_copy_only=False)
    assert ok.sum() == 60
    assert pc.is_null(out["embedding"]).to_numpy(zero_copy_only=False).tolist() == (~ok).tolist()
    # the same numbers as the workers' handler on the workers' decoder
    handler = load_handler("digits-cnn", state_dir=settings.state_dir, batch_size=8, mode="featurize")
    handler.load()
    info = handler.info()
    first = out.filter(pc.equal(out["status"], "ok")).slice(0, 3)
    pixels = np.stack([decode_image(b, info.input_size, info.channels) for b in first["bytes"].to_pylist()])
    np.testing.assert_allclose(featurizer.embeddings(first), handler.predict_batch(pixels).embeddings, atol=1e-4)
    assert featurizer.embeddings(out).shape == (60, info.embedding_size)


def test_the_predictor_adds_predictions_that_match_the_labels(folder: Path, settings: Settings):
    table = read_images(folder, label_from_folder=True, settings=settings)
    out = ImagePredictor("digits-cnn", top_k=3, settings=settings).transform(table)
    good = out.filter(pc.equal(out["status"], "ok"))
    accuracy = np.mean(np.array(good["prediction"].to_pylist()) == np.array(good["label"].to_pylist()))
    assert accuracy >= 0.9
    first = good["top_k"][0].as_py()
    assert len(first) == 3 and first[0]["label"] == good["prediction"][0].as_py()
    assert first[0]["probability"] >= first[1]["probability"] >= first[2]["probability"]
    assert out.filter(pc.invert(pc.equal(out["status"], "ok")))["prediction"].null_count == 2


def test_an_unknown_model_lists_the_known_ones(settings: Settings):
    with pytest.raises(ModelNotFound, match="available: digits-cnn, MobileNetV2"):
        ImageFeaturizer("NoSuchNet", settings=settings)
    with pytest.raises(ValueError, match="top_k"):
        ImagePredictor("digits-cnn", top_k=0, settings=settings)


def test_fit_head_trains_evaluates_and_predicts(folder: Path, settings: Settings):
    table = read_images(folder, label_from_folder=True, settings=settings)
    head = fit_head(ImageFeaturizer("digits-cnn", settings=settings), table, search="random", trials=1)
    assert head.labels == tuple(str(d) for d in range(10))
    assert head.confusion.shape == (10, 10) and head.confusion.sum() == 12  # the 20% test split of 60 usable rows
    assert 0.0 <= head.metrics["test_accuracy"] <= 1.0 and "val_accuracy" in head.metrics
    predicted = head.predict(table)
    good = predicted.filter(pc.equal(predicted["status"], "ok"))
    accuracy = np.mean(np.array(good["prediction"].to_pylist()) == np.array(good["label"].to_pylist()))
    assert accuracy >= 0.8
    assert head.confusion_image().size[0] > 100


def test_fit_head_says_what_is_missing(folder: Path, settings: Settings):
    featurizer = ImageFeaturizer("digits-cnn", settings=settings)
    table = read_images(folder / "2", label_from_folder=True, settings=settings)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_head(featurizer, table)
    with pytest.raises(ValueError, match="no 'kind' column"):
        fit_head(featurizer, table, label_column="kind")


def test_import_streamdl_is_cheap_and_exposes_the_api():
    code = "import sys, streamdl; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"
    for name in streamdl.__all__:
        assert getattr(streamdl, name) is not None
    assert streamdl.read_images is read_images
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        streamdl.nope  # noqa: B018
