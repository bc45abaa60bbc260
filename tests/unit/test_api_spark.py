"""The Spark adapter on a local Spark session: a *streaming* DataFrame (the binaryFile source over a folder,
``availableNow``) through ``predict``, and a batch one through ``featurize``. Needs the ``spark`` extra."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyspark", reason="the Spark adapter's tests need pip install -e '.[spark]'")
pytest.importorskip("pandas", reason="the Spark adapter's tests need pip install -e '.[spark]'")

from streamdl.connectors.image_producer import iter_digits
from streamdl.settings import Settings
from streamdl.streams.api.spark import BINARY_FILE_SCHEMA, featurize, predict


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # executors run this venv's Python (streamdl importable)
    session = (
        SparkSession.builder.master("local[1]")
        .appName("streamdl-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spark-digits")
    for item in iter_digits(30):
        (root / item.label).mkdir(exist_ok=True)
        (root / item.label / f"{item.image_id}.png").write_bytes(item.data)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def test_predict_on_a_streaming_file_source(spark, folder: Path, settings: Settings):
    stream = (
        spark.readStream.schema(BINARY_FILE_SCHEMA)
        .format("binaryFile")
        .option("pathGlobFilter", "*.png")
        .option("recursiveFileLookup", "true")
        .load(str(folder))
    )
    assert stream.isStreaming
    out = predict(stream, "digits-cnn", top_k=1, state_dir=str(settings.state_dir))
    query = out.writeStream.format("memory").queryName("streamdl_preds").trigger(availableNow=True).start()
    query.awaitTermination(600)
    assert query.exception() is None
    rows = spark.sql("select path, prediction, probability, status, reason from streamdl_preds").collect()
    assert len(rows) == 31
    good = [r for r in rows if r.status == "ok"]
    assert len(good) == 30
    accuracy = sum(Path(r.path).parent.name == r.prediction for r in good) / len(good)
    assert accuracy >= 0.9 and all(0 < r.probability <= 1 for r in good)
    bad = next(r for r in rows if r.path.endswith("broken.png"))
    assert bad.prediction is None and bad.status != "ok" and bad.reason


def test_featurize_a_batch_dataframe(spark, folder: Path, settings: Settings):
    df = spark.read.format("binaryFile").option("pathGlobFilter", "*.png").load(str(folder / "1"))
    rows = featurize(df, "digits-cnn", state_dir=str(settings.state_dir)).select("embedding", "status").collect()
    assert rows and all(r.status == "ok" and len(r.embedding) == 64 for r in rows)
    with pytest.raises(ValueError, match="no column 'image'"):
        featurize(df, content_col="image")
