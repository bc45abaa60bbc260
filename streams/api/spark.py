"""Spark adapter for Deep Learning Pipelines' users: the API's featurizer and predictor as ``mapInPandas``
stages, on batch *and* Structured Streaming DataFrames (the case ``DeepImageFeaturizer`` never supported).

    df = spark.readStream.schema(BINARY_FILE_SCHEMA).format("binaryFile").load("photos/")
    features = featurize(df, "digits-cnn")           # + embedding, status, reason
    predictions = predict(df, "digits-cnn", top_k=1)  # + prediction, probability, status, reason

Each task decodes with the workers' decoder and limits and runs the model in batches; a model is loaded once
per Python worker (the last :data:`MAX_CACHED_MODELS` are kept). pyspark is an optional dependency:
``pip install 'streamdl[spark]'``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"
"""The schema of Spark's ``binaryFile`` source: a streaming read must be given it."""

MAX_CACHED_MODELS = 2
"""Models kept loaded per Spark Python worker (a model loads once, not once per partition or micro-batch)."""


def _require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ImportError("the Spark adapter needs pyspark and pandas: pip install 'streamdl[spark]'") from None


def featurize(
    df: DataFrame,
    model: str = "digits-cnn",
    *,
    content_col: str = "content",
    batch_size: int = 64,
    weights: str | None = "imagenet",
    state_dir: str | None = None,
) -> DataFrame:
    """``df`` plus ``embedding`` (array<float>, null where the image could not be used), ``status`` and
    ``reason``, from the image bytes in ``content_col`` (what the ``binaryFile`` source gives)."""
    _require_pyspark()
    from pyspark.sql.types import ArrayType, FloatType

    fields = [("embedding", ArrayType(FloatType()))]
    return _map(df, "featurize", model, content_col, batch_size, weights, state_dir, fields, {})


def predict(
    df: DataFrame,
    model: str = "digits-cnn",
    *,
    top_k: int = 5,
    content_col: str = "content",
    batch_size: int = 64,
    weights: str | None = "imagenet",
    state_dir: str | None = None,
) -> DataFrame:
    """``df`` plus ``prediction`` (the best label), ``probability``, ``status`` and ``reason``."""
    _require_pyspark()
    from pyspark.sql.types import FloatType, StringType

    fields = [("prediction", StringType()), ("probability", FloatType())]
    return _map(df, "classify", model, content_col, batch_size, weights, state_dir, fields, {"top_k": top_k})


def _map(df, mode, model, content_col, batch_size, weights, state_dir, fields, options) -> DataFrame:
    from pyspark.sql.types import StringType, StructField, StructType

    from streamdl.streams.api.context import resolve

    if content_col not in df.columns:
        raise ValueError(f"no column {content_col!r} in the DataFrame; columns: {', '.join(df.columns)}")
    state = str(state_dir or resolve(None).state_dir)
    added = [*fields, ("status", StringType()), ("reason", StringType())]
    clash = [name for name, _ in added if name in df.columns]
    if clash:
        raise ValueError(f"the DataFrame has columns named {clash} already; rename them first")
    schema = StructType([*df.schema.fields, *(StructField(name, kind, True) for name, kind in added)])
    key = (mode, model, batch_size, weights, state, tuple(sorted(options.items())))
    names = [name for name, _ in added]

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        stage = _stage(*key)
        for frame in frames:
            table = pa.table({"bytes": pa.array(frame[content_col].tolist(), pa.binary())})
            out = stage.transform(table)
            frame = frame.copy()
            for name in names:
                frame[name] = out[name].to_pylist()
            yield frame

    return df.mapInPandas(run, schema)


@functools.lru_cache(maxsize=MAX_CACHED_MODELS)
def _stage(mode: str, model: str, batch_size: int, weights: str | None, state_dir: str, options: tuple) -> Any:
    from streamdl.settings import load_settings
    from streamdl.streams.api.featurize import ImageFeaturizer, ImagePredictor

    settings = load_settings({"state_dir": state_dir})
    kind = ImageFeaturizer if mode == "featurize" else ImagePredictor
    return kind(model, batch_size=batch_size, weights=weights, progress=False, settings=settings, **dict(options))
