"""``ImageFeaturizer`` and ``ImagePredictor``: a model over a table of images, batched, one column set added.

The model is loaded by :func:`streamdl.models.catalog.load_handler` (the workers' loader) and images are
decoded by :func:`streamdl.models.decode.decode_image` under the workers' limits; TensorFlow uses a GPU
when there is one. Rows that are not ``status == "ok"`` (or fail to decode now) get nulls, and their
``status``/``reason`` say why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamdl.models.decode import DecodeError, decode_image
from streamdl.models.handler import BatchResult, ModelHandler, ModelInfo
from streamdl.settings import Settings
from streamdl.streams.api.context import decode_limits, resolve

PROGRESS_MIN_ROWS = 1000
"""With ``progress=None``, a bar is shown from this many rows on."""


@dataclass
class _Run:
    ok: np.ndarray
    """Per row: whether the model saw it."""
    result: BatchResult
    """One row per ``ok`` row, in table order."""
    status: list[str]
    reason: list[str | None]


class _ImageModel:
    mode = "featurize"

    def __init__(
        self,
        model: str | os.PathLike = "digits-cnn",
        *,
        batch_size: int = 64,
        weights: str | os.PathLike | None = "imagenet",
        head: str | os.PathLike | None = None,
        progress: bool | None = None,
        settings: Settings | None = None,
    ) -> None:
        from streamdl.models.catalog import load_handler

        self.settings = resolve(settings)
        self.model = str(model)
        self.batch_size = batch_size
        self.progress = progress
        self.limits = decode_limits(self.settings)
        # checks the name, files and arguments now: an unknown model lists the known ones (ModelNotFound)
        self.handler: ModelHandler = load_handler(
            self.model, state_dir=self.settings.state_dir, batch_size=batch_size, weights=weights,
            mode=self.mode, head=head,
        )  # fmt: skip
        self._loaded = False

    def info(self) -> ModelInfo:
        """The model's name, version, input size, embedding size and labels (loads it on first use)."""
        if not self._loaded:
            self.handler.load()
            self._loaded = True
        return self.handler.info()

    def _run(self, table: pa.Table) -> _Run:
        from tqdm.auto import tqdm

        info = self.info()
        n = table.num_rows
        status = table["status"].to_pylist() if "status" in table.column_names else ["ok"] * n
        reason = table["reason"].to_pylist() if "reason" in table.column_names else [None] * n
        ok = np.array([s == "ok" for s in status], bool)
        todo = np.flatnonzero(ok)
        data = table["bytes"]
        embeddings, probabilities = [], []
        show = self.progress if self.progress is not None else len(todo) >= PROGRESS_MIN_ROWS
        with tqdm(total=len(todo), unit="img", desc=info.name, disable=not show, leave=False) as bar:
            for start in range(0, len(todo), self.batch_size):
                rows, pixels = [], []
                for i in todo[start : start + self.batch_size]:
                    try:
                        pixels.append(
                            decode_image(data[int(i)].as_py() or b"", info.input_size, info.channels, self.limits)
                        )
                        rows.append(i)
                    except DecodeError as exc:
                        ok[i], status[i], reason[i] = False, exc.reason, exc.message
                if pixels:
                    out = self.handler.predict_batch(np.stack(pixels))
                    embeddings.append(out.embeddings)
                    probabilities.append(out.probabilities)
                bar.update(len(todo[start : start + self.batch_size]))
        result = BatchResult(
            np.concatenate(embeddings) if embeddings else np.zeros((0, info.embedding_size), np.float32),
            np.concatenate(probabilities) if probabilities else np.zeros((0, len(info.labels)), np.float32),
        )
        return _Run(ok, result, status, reason)


def _with(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """``table`` with column ``name`` set to ``values`` (replaced when it exists)."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def _scatter(run: _Run, values: list) -> list:
    """Per-``ok``-row ``values`` spread over every row, ``None`` elsewhere."""
    out: list = [None] * len(run.ok)
    for i, value in zip(np.flatnonzero(run.ok), values, strict=True):
        out[i] = value
    return out


def _status(table: pa.Table, run: _Run) -> pa.Table:
    table = _with(table, "status", pa.array(run.status, pa.string()))
    return _with(table, "reason", pa.array(run.reason, pa.string()))


class ImageFeaturizer(_ImageModel):
    """Deep features of images: ``ImageFeaturizer("MobileNetV2").transform(table)`` adds ``embedding``.

    ``model``: ``"digits-cnn"`` (offline default), a Keras application name (``MobileNetV2``, ``ResNet50``,
    ...; ImageNet weights from the Keras cache) or the path of a ``.keras`` file or SavedModel.
    """

    mode = "featurize"

    def transform(self, table: pa.Table, column: str = "embedding") -> pa.Table:
        """``table`` (with a ``bytes`` column, e.g. from :func:`~streamdl.streams.api.tables.read_images`) plus
        ``column``: a float32 list per row (null where the image could not be used)."""
        run = self._run(table)
        size = self.info().embedding_size
        values = pa.array(_scatter(run, list(run.result.embeddings)), pa.list_(pa.float32(), size))
        return _with(_status(table, run), column, values)

    def embeddings(self, table: pa.Table, column: str = "embedding") -> np.ndarray:
        """The ``(rows, embedding_size)`` float32 matrix of a transformed table's usable rows."""
        if column not in table.column_names:
            table = self.transform(table, column)
        values = table[column].drop_null().combine_chunks()
        return values.values.to_numpy(zero_copy_only=False).reshape(len(values), -1)


TOP_K_TYPE = pa.list_(pa.struct([pa.field("label", pa.string()), pa.field("probability", pa.float32())]))


class ImagePredictor(_ImageModel):
    """Class predictions: ``ImagePredictor("digits-cnn", top_k=3).transform(table)`` adds ``prediction``
    (best label), ``probability`` (its probability) and ``top_k`` (label/probability pairs, best first).

    ``head``: a classifier head file put after the model's embedding (what :meth:`Head.save` writes).
    """

    mode = "classify"

    def __init__(self, model: str | os.PathLike = "digits-cnn", *, top_k: int = 5, **kwargs) -> None:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer. Received: top_k={top_k!r}")
        super().__init__(model, **kwargs)
        self.top_k = top_k

    def transform(self, table: pa.Table) -> pa.Table:
        """``table`` plus ``prediction``, ``probability`` and ``top_k`` (nulls where the image could not be used)."""
        run = self._run(table)
        labels = self.info().labels
        if not labels:
            raise ValueError(f"{self.model} has no classes; use ImageFeaturizer for embeddings")
        tops = run.result.top_k(labels, self.top_k)
        table = _status(table, run)
        table = _with(table, "prediction", pa.array(_scatter(run, [t[0][0] for t in tops]), pa.string()))
        table = _with(table, "probability", pa.array(_scatter(run, [t[0][1] for t in tops]), pa.float32()))
        pairs = [[{"label": lab, "probability": p} for lab, p in t] for t in tops]
        return _with(table, "top_k", pa.array(_scatter(run, pairs), TOP_K_TYPE))


def usable(table: pa.Table) -> pa.Table:
    """The rows whose image was read and decoded (``status == "ok"``)."""
    return table.filter(pc.equal(table["status"], "ok"))
