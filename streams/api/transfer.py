"""Transfer learning: a classifier head over a featurizer's embeddings, in four lines.

    table = read_images("photos/", label_from_folder=True)
    head = fit_head(ImageFeaturizer("digits-cnn"), table, label_column="label", search="grid")
    print(head.metrics, head.confusion)
    head.register()

Training is :func:`streamdl.models.retraining.heads.train_head` (the candidates ``streamdl retrain``
searches); :meth:`Head.register` ends in :func:`streamdl.streams.jobs.retrain.register_head`, the same
registration and gate as ``streamdl retrain``, so a worker serving the featurizer's model picks it up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamdl.streams.api.featurize import TOP_K_TYPE, ImageFeaturizer, _with

SPLITS = (0.6, 0.2, 0.2)
"""Train, validation and test shares of the labelled rows."""


@dataclass
class Head:
    """A trained head: ``metrics`` and ``confusion`` on the held-out test rows, :meth:`predict`,
    :meth:`save`, :meth:`register`."""

    featurizer: ImageFeaturizer
    labels: tuple[str, ...]
    trained: Any
    """:class:`streamdl.models.retraining.heads.Trained`: the best candidate, its model and every trial."""
    evaluation: Any
    """:class:`streamdl.models.retraining.heads.Evaluation` on the test rows."""
    test: pa.Table
    """The test rows (with their embeddings), kept for :meth:`register`'s comparison with the served model."""
    test_probabilities: np.ndarray = field(repr=False)
    validation_embeddings: np.ndarray | None = field(default=None, repr=False)
    """The validation rows' embeddings: :meth:`register` saves the head's drift reference from them."""

    @property
    def metrics(self) -> dict[str, float]:
        """Test accuracy, per-class precision and recall, and the validation accuracy of the best candidate."""
        return {**self.evaluation.metrics(), "val_accuracy": round(self.trained.val_accuracy, 6)}

    @property
    def confusion(self) -> np.ndarray:
        """The test confusion matrix: rows are true labels, columns predicted, in :attr:`labels` order."""
        return self.evaluation.confusion

    def confusion_image(self):
        """The confusion matrix as a PIL image (shown inline in Jupyter)."""
        import io

        from PIL import Image

        from streamdl.models.retraining.heads import confusion_png

        title = f"{self.featurizer.model} head: test accuracy {self.evaluation.accuracy:.4f}"
        return Image.open(io.BytesIO(confusion_png(self.evaluation, title)))

    def predict(self, table: pa.Table, top_k: int = 5) -> pa.Table:
        """``table`` plus ``prediction``, ``probability`` and ``top_k`` from this head (featurized first when
        it has no ``embedding`` column)."""
        if "embedding" not in table.column_names:
            table = self.featurizer.transform(table)
        ok = pc.is_valid(table["embedding"]).to_numpy(zero_copy_only=False)
        out: list = [None] * table.num_rows
        if ok.any():
            x = self.featurizer.embeddings(table)
            probs = np.asarray(self.trained.model.predict(x, batch_size=1024, verbose=0))
            order = np.argsort(-probs, axis=1)[:, : min(top_k, len(self.labels))]
            tops = [[(self.labels[j], float(p[j])) for j in row] for p, row in zip(probs, order, strict=True)]
            for i, top in zip(np.flatnonzero(ok), tops, strict=True):
                out[i] = top
        table = _with(table, "prediction", pa.array([t and t[0][0] for t in out], pa.string()))
        table = _with(table, "probability", pa.array([t and t[0][1] for t in out], pa.float32()))
        pairs = [t and [{"label": lab, "probability": p} for lab, p in t] for t in out]
        return _with(table, "top_k", pa.array(pairs, TOP_K_TYPE))

    def save(self, folder: str | os.PathLike) -> Path:
        """``head.keras`` and ``info.json`` in ``folder``; ``ImagePredictor(model, head=path)`` serves it,
        and so does a worker with ``STREAMDL_MODEL_HEAD``."""
        from streamdl.models.retraining.heads import save_head

        info = self.featurizer.info()
        meta = {"name": f"{info.name}-head", "version": "local", "model_name": info.name, "labels": list(self.labels)}
        return save_head(self.trained.model, Path(folder), meta)

    def register(self, *, gate: bool = True, say=print) -> Any:
        """Register in the MLflow registry as the next version of the featurizer's model, exactly as
        ``streamdl retrain`` does: compared with the served version on the test rows, promoted (the
        champion alias) and announced on the model-updates topic when it passes the gate
        (``STREAMDL_RETRAIN_TOLERANCE``); ``gate=False`` promotes it anyway. Returns the
        :class:`~streamdl.streams.jobs.retrain.RetrainResult` (status ``promoted`` or ``registered``)."""
        from streamdl.models.registry import Registry
        from streamdl.streams.api.featurize import ImagePredictor
        from streamdl.streams.jobs.retrain import _served, register_head
        from streamdl.streams.quality.reference import head_reference

        settings = self.featurizer.settings.model_copy(update={"model_name": self.featurizer.model})
        registry = Registry.from_settings(settings)
        champion, served, current_labels = _served(settings, registry)
        current = ImagePredictor(
            self.featurizer.model, top_k=1, head=served.head, batch_size=self.featurizer.batch_size,
            settings=settings, progress=False,
        ).transform(self.test)  # fmt: skip
        truth = np.asarray(self.test["label"].to_pylist(), dtype=object)
        current_acc = float((np.asarray(current["prediction"].to_pylist(), dtype=object) == truth).mean())
        reference = None
        if self.validation_embeddings is not None and len(self.validation_embeddings):
            reference = head_reference(
                self.trained.model, self.labels, self.validation_embeddings, settings.drift_reservoir_size
            )
        return register_head(
            settings, registry, champion, self.trained, self.evaluation, self.test_probabilities, current_acc,
            current_labels, gate=gate, say=say, reference=reference,
        )  # fmt: skip


def fit_head(
    featurizer: ImageFeaturizer,
    table: pa.Table,
    label_column: str = "label",
    *,
    search: str = "grid",
    trials: int = 8,
    seed: int = 0,
    progress: bool | None = None,
) -> Head:
    """Train a classifier head on ``featurizer``'s embeddings of the labelled, usable rows of ``table``.

    The rows are split 60/20/20 into train, validation and test (stratified where the classes are large
    enough); ``search`` (``"grid"``, or ``"random"`` with ``trials``) picks architecture, learning rate and
    L2 on validation; the best is judged on test. Raises ``ValueError`` when there are too few labelled rows or classes.
    """
    from streamdl.models.retraining import heads

    if label_column not in table.column_names:
        raise ValueError(
            f"table has no {label_column!r} column; columns: {', '.join(table.column_names)} "
            "(read_images(..., label_from_folder=True) labels by folder)"
        )
    tried = heads.candidates(search, trials, seed)
    if "embedding" not in table.column_names:
        table = featurizer.transform(table)
    table = table.filter(pc.and_(pc.is_valid(table["embedding"]), pc.is_valid(table[label_column])))
    table = _with(table, "label", pc.cast(table[label_column], pa.string()))
    y_text = np.asarray(table["label"].to_pylist(), dtype=object)
    labels = tuple(sorted(set(y_text.tolist())))
    if len(labels) < 2:
        raise ValueError(f"a classifier needs at least 2 classes; the usable labelled rows hold {len(labels)}")
    counts = {label: int((y_text == label).sum()) for label in labels}
    if min(counts.values()) < 3:
        raise ValueError(f"every class needs at least 3 labelled images (train, validation, test); got {counts}")
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[v] for v in y_text])
    rows = np.arange(table.num_rows)
    train, rest = _split(rows, y, 1 - SPLITS[0], seed)
    val, test = _split(rest, y[rest], SPLITS[2] / (1 - SPLITS[0]), seed)
    x = featurizer.embeddings(table)
    say = _progress(progress, len(tried))
    trained = heads.train_head(x[train], y[train], x[val], y[val], len(labels), tried, seed=seed, progress=say)
    probabilities = np.asarray(trained.model.predict(x[test], batch_size=1024, verbose=0))
    evaluation = heads.evaluate(probabilities, y[test], labels)
    return Head(featurizer, labels, trained, evaluation, table.take(pa.array(test)), probabilities, x[val])


def _split(rows: np.ndarray, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` split in two, stratified by ``y`` where every class has enough rows for it."""
    from sklearn.model_selection import train_test_split

    try:
        return tuple(train_test_split(rows, test_size=share, stratify=y, random_state=seed))
    except ValueError:  # a class too small to appear on both sides
        return tuple(train_test_split(rows, test_size=share, random_state=seed))


def _progress(progress: bool | None, total: int):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="candidate", desc="fit_head", disable=progress is False, leave=False)

    def step(i: int, n: int, trial: dict) -> None:
        bar.update(1)
        bar.set_postfix(val_accuracy=trial["val_accuracy"])
        if i == n:
            bar.close()

    return step
