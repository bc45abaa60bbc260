"""Keras models over event records: an autoencoder (anomaly scores) and an MLP classifier, and their registry.

A trained model lives in ``<state_dir>/models/<name>/<version>/`` with ``model.keras``,
``features.json`` (the fitted :class:`~streamdl.models.event_features.EventFeatures`) and ``info.json``;
versions are ``"1"``, ``"2"``, ... Training writes to a temporary folder beside them and renames it
to the next free version, so a crash never leaves a half-written version and two trainers never
share one.

The **autoencoder** reads all features and reconstructs the standardised numeric ones through a
narrow bottleneck, its decoder also given the context (categorical and time-of-day columns). A
record's reconstruction error is the mean squared error over its *present* numeric features; its
anomaly score is that error divided by the :data:`SCORE_QUANTILE` quantile of the training errors,
so about 0.5% of training records score above 1 and the score has no unit. A record is an anomaly
when its score exceeds the model's threshold (:data:`DEFAULT_ANOMALY_THRESHOLD` unless trained
with another).

The **classifier** maps all features to softmax probabilities over the sorted label strings.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamdl.models.cache import rename_into_place
from streamdl.models.digits import _deterministic, _versions
from streamdl.models.errors import ModelNotFound
from streamdl.models.event_features import EventFeatures, EventRecord

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

KINDS = ("autoencoder", "classifier")
DEFAULT_EVENT_MODEL = "sensors-ae"
"""The default anomaly model: trained on first use on the sample sensor stream (:func:`ensure_sensor_model`)."""
SENSOR_TRAIN_DAYS = 2
"""The default model learns from the sample stream's first days (before any anomaly)."""
DEFAULT_ANOMALY_THRESHOLD = 3.0
"""Records scoring above this are anomalies (the score is the error over the training errors' 99.5% quantile)."""
SCORE_QUANTILE = 0.995
SEED = 0
EPOCHS = {"autoencoder": 40, "classifier": 30}
BATCH_SIZE = 128
MIN_RECORDS = 32
HOLDOUT = 0.2
"""The classifier's share of records held out to report accuracy (stratified), when each class has enough."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FILES = ("model.keras", "features.json", "info.json")

Progress = Callable[[int, int], None]
"""Called after each training epoch with ``(epochs_done, epochs)``."""

_registry_lock = threading.Lock()
_default_lock = threading.Lock()


# --- Networks ------------------------------------------------------------------------------------
def build_autoencoder(features: int, numeric: int, context: int, *, latent: int | None = None) -> keras.Model:
    """``{"features": (n, features), "context": (n, context)}`` -> ``(n, numeric)`` reconstructed numeric values."""
    import keras
    from keras import layers

    latent = latent if latent is not None else max(1, numeric // 2)
    x = keras.Input(shape=(features,), name="features")
    c = keras.Input(shape=(context,), name="context")
    h = layers.Dense(32, activation="relu", name="encode1")(x)
    h = layers.Dense(16, activation="relu", name="encode2")(h)
    z = layers.Dense(latent, name="latent")(h)
    h = layers.Concatenate(name="condition")([z, c])
    h = layers.Dense(32, activation="relu", name="decode1")(h)
    h = layers.Dense(32, activation="relu", name="decode2")(h)
    out = layers.Dense(numeric, name="reconstruction")(h)
    return keras.Model({"features": x, "context": c}, out, name="event_autoencoder")


def build_classifier(features: int, classes: int) -> keras.Model:
    """``(n, features)`` -> ``(n, classes)`` softmax probabilities."""
    import keras
    from keras import layers

    x = keras.Input(shape=(features,), name="features")
    h = layers.Dense(64, activation="relu", name="dense1")(x)
    h = layers.Dropout(0.1, name="dropout")(h)
    h = layers.Dense(32, activation="relu", name="dense2")(h)
    out = layers.Dense(classes, activation="softmax", name="probabilities")(h)
    return keras.Model(x, out, name="event_classifier")


def reconstruction_errors(x: np.ndarray, reconstruction: np.ndarray, features: EventFeatures) -> np.ndarray:
    """Per row, the mean squared error over the numeric features present (0 when none is)."""
    present = 1.0 - x[:, features.missing_columns]
    squared = present * (reconstruction - x[:, features.numeric_columns]) ** 2
    return (squared.sum(axis=1) / np.maximum(present.sum(axis=1), 1.0)).astype(np.float32)


# --- Training ------------------------------------------------------------------------------------
def train_event_model(
    records: Iterable[Any],
    *,
    kind: str,
    name: str,
    state_dir: Path,
    labels: Sequence[str] | None = None,
    seed: int = SEED,
    epochs: int | None = None,
    threshold: float = DEFAULT_ANOMALY_THRESHOLD,
    progress: Progress | None = None,
) -> Path:
    """Train a ``kind`` model on ``records`` and save it as the next version of ``name``; returns its folder.

    Args:
        records: :class:`~streamdl.models.event_features.EventRecord` s (or anything ``EventRecord.of`` takes).
        kind: ``"autoencoder"`` (unsupervised; ``labels`` must be ``None``) or ``"classifier"``.
        labels: the classifier's label string per record (at least two distinct ones).
        epochs: passes over the records (default: :data:`EPOCHS` of the kind).
        threshold: the autoencoder's anomaly threshold stored in ``info.json``.
    """
    check_name(name)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}. Received: kind={kind!r}")
    rows = [EventRecord.of(r) for r in records]
    trained = _train(
        rows, kind=kind, name=name, labels=labels, seed=seed, epochs=epochs, threshold=threshold, progress=progress
    )
    tmp = _new_tmp(Path(state_dir), name)
    try:
        _save(tmp, *trained)
        return _publish(tmp, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _train(
    rows: list[EventRecord],
    *,
    kind: str,
    name: str,
    labels: Sequence[str] | None,
    seed: int,
    epochs: int | None,
    threshold: float,
    progress: Progress | None,
) -> tuple[keras.Model, EventFeatures, dict[str, Any]]:
    """Fit features and model on ``rows``: ``(model, features, info)``; ``ValueError`` for what cannot be learned."""
    import keras

    epochs = EPOCHS[kind] if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1. Received: epochs={epochs}")
    if len(rows) < MIN_RECORDS:
        raise ValueError(f"a {kind} needs at least {MIN_RECORDS} records to train on. Received: {len(rows)}")
    if kind == "autoencoder" and labels is not None:
        raise ValueError("an autoencoder learns without labels: pass labels=None (or train kind='classifier')")
    if kind == "classifier":
        y, classes = _encode_labels(labels, len(rows))
    if not threshold > 0:
        raise ValueError(f"threshold must be positive. Received: threshold={threshold!r}")
    started = time.perf_counter()
    features = EventFeatures().fit(rows)
    if kind == "autoencoder" and not features.numeric:
        raise ValueError("an autoencoder reconstructs numeric features, and the records have none")
    x = features.transform(rows)
    callbacks = (
        [] if progress is None else [keras.callbacks.LambdaCallback(on_epoch_end=lambda e, _: progress(e + 1, epochs))]
    )
    info: dict[str, Any] = {"name": name, "version": "", "kind": kind, "labels": [], "threshold": None}
    with _deterministic(seed):
        if kind == "autoencoder":
            model, metrics = _fit_autoencoder(x, features, epochs, callbacks, threshold)
            info.update(threshold=float(threshold), score_scale=metrics.pop("score_scale"))
        else:
            model, metrics = _fit_classifier(x, y, len(classes), epochs, callbacks, seed)
            info["labels"] = classes
    info.update(
        feature_names=features.feature_names,
        train_records=len(rows),
        metrics=metrics,
        epochs=epochs,
        seed=seed,
        train_seconds=round(time.perf_counter() - started, 2),
        versions={"python": platform.python_version(), **_versions("tensorflow", "keras", "numpy")},
    )
    return model, features, info


def _save(out_dir: Path, model: keras.Model, features: EventFeatures, info: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    (out_dir / "features.json").write_text(features.to_json() + "\n", encoding="utf-8")
    (out_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _fit_autoencoder(x: np.ndarray, features: EventFeatures, epochs: int, callbacks: list, threshold: float):
    import keras
    from keras import layers

    k = len(features.numeric)
    context = x[:, features.context_columns]
    present = 1.0 - x[:, features.missing_columns]
    model = build_autoencoder(x.shape[1], k, context.shape[1])
    mask = keras.Input(shape=(k,), name="present")
    masked = layers.Multiply(name="masked")([model.output, mask])  # missing values cost nothing
    trainer = keras.Model([*model.inputs, mask], masked)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    history = trainer.fit(
        {"features": x, "context": context, "present": present}, x[:, features.numeric_columns],
        batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=callbacks,
    )  # fmt: skip
    reconstruction = model.predict({"features": x, "context": context}, batch_size=1024, verbose=0)
    errors = reconstruction_errors(x, reconstruction, features)
    scale = max(float(np.quantile(errors, SCORE_QUANTILE)), 1e-9)
    scores = errors / scale
    metrics = {
        "score_scale": scale,
        "loss": round(float(history.history["loss"][-1]), 6),
        "median_score": round(float(np.median(scores)), 4),
        "flagged_fraction": round(float((scores > threshold).mean()), 6),
    }
    return model, metrics


def _fit_classifier(x: np.ndarray, y: np.ndarray, classes: int, epochs: int, callbacks: list, seed: int):
    import keras

    train, held = _split(y, seed)
    model = build_classifier(x.shape[1], classes)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    history = model.fit(x[train], y[train], batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=callbacks)
    metrics: dict[str, Any] = {"loss": round(float(history.history["loss"][-1]), 6), "holdout_records": int(len(held))}
    predicted = model.predict(x, batch_size=1024, verbose=0).argmax(axis=1)
    metrics["train_accuracy"] = round(float((predicted[train] == y[train]).mean()), 4)
    if len(held):
        metrics["holdout_accuracy"] = round(float((predicted[held] == y[held]).mean()), 4)
    return model, metrics


def _encode_labels(labels: Sequence[str] | None, n: int) -> tuple[np.ndarray, list[str]]:
    if labels is None:
        raise ValueError("a classifier needs labels: one label string per record")
    labels = [None if label is None else str(label) for label in labels]
    if len(labels) != n:
        raise ValueError(f"labels must have one entry per record. Received: {len(labels)} labels for {n} records")
    if any(label is None or label == "" for label in labels):
        raise ValueError("every record needs a non-empty label")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"a classifier needs at least 2 distinct labels. Received: {classes}")
    index = {label: i for i, label in enumerate(classes)}
    return np.array([index[label] for label in labels], np.int64), classes


def _split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out row indices: a stratified :data:`HOLDOUT` share when every class has 5 or more."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y)
    if counts.min() < 5:
        return np.arange(len(y)), np.arange(0)
    held = [rng.permutation(np.flatnonzero(y == c))[: max(1, int(round(HOLDOUT * n)))] for c, n in enumerate(counts)]
    held_rows = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(y)), held_rows), held_rows


def ensure_sensor_model(state_dir: Path, *, progress: Progress | None = None) -> Path:
    """The folder of the latest ``sensors-ae``; trains version 1 when there is none (about 15 s, once).

    It learns from the first :data:`SENSOR_TRAIN_DAYS` days of
    :func:`streamdl.models.sensor_sample.sensor_events` with the default arguments. Training writes to a
    temporary folder and renames it into place, so concurrent trainers agree on one version 1.
    """
    with _default_lock:
        versions = model_versions(DEFAULT_EVENT_MODEL, state_dir)
        if versions:
            return models_dir(state_dir) / DEFAULT_EVENT_MODEL / versions[-1]
        from streamdl.models.sensor_sample import sensor_events

        logger.info(
            "training %s on the sample sensor stream (once); cache %s", DEFAULT_EVENT_MODEL, models_dir(state_dir)
        )
        rows = [EventRecord.of(e) for e in sensor_events(days=SENSOR_TRAIN_DAYS)]  # = the default stream's first days
        trained = _train(
            rows, kind="autoencoder", name=DEFAULT_EVENT_MODEL, labels=None, seed=SEED, epochs=None,
            threshold=DEFAULT_ANOMALY_THRESHOLD, progress=progress,
        )  # fmt: skip
        info = trained[2]
        tmp = _new_tmp(Path(state_dir), DEFAULT_EVENT_MODEL)
        try:
            _save(tmp, *trained)
            folder = _publish(tmp, DEFAULT_EVENT_MODEL, version="1")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("trained %s in %.1fs on %d records", DEFAULT_EVENT_MODEL, info["train_seconds"], len(rows))
        return folder


# --- Registry ------------------------------------------------------------------------------------
def check_name(name: str) -> str:
    """``name`` when it can name a model (``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``); else ``ValueError``."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"a model name has 1 to 64 characters [A-Za-z0-9_.-] and starts with a letter or digit. Received: {name!r}"
        )
    return name


def models_dir(state_dir: Path) -> Path:
    """``<state_dir>/models``: one folder per model name."""
    return Path(state_dir) / "models"


def model_versions(name: str, state_dir: Path) -> list[str]:
    """The complete versions of event model ``name``, oldest first (empty when there are none)."""
    folder = models_dir(state_dir) / name
    if not NAME_PATTERN.match(name) or not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.name.isdigit() and is_complete(p)), key=int)


def event_models(state_dir: Path) -> dict[str, list[str]]:
    """Every event model in the registry: name -> versions
    (image models, which lack ``features.json``, are left out)."""
    root = models_dir(state_dir)
    if not root.is_dir():
        return {}
    found = {p.name: model_versions(p.name, state_dir) for p in sorted(root.iterdir()) if p.is_dir()}
    return {name: versions for name, versions in found.items() if versions}


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole saved event model."""
    return all((folder / f).is_file() for f in FILES)


def _new_tmp(state_dir: Path, name: str) -> Path:
    parent = models_dir(state_dir) / name
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".training-", dir=parent))


def _publish(tmp: Path, name: str, version: str | None = None) -> Path:
    """Rename ``tmp`` to version ``version``, or to the next free one; the version's folder.

    With a fixed ``version`` that is already complete (another trainer was first), that one is kept.
    """
    parent = tmp.parent
    with _registry_lock:
        if version is not None:
            _set_version(tmp, version)
            if not rename_into_place(tmp, parent / version, is_complete):
                logger.info("another process saved %s version %s first; using it", name, version)
            return parent / version
        while True:
            taken = [int(p.name) for p in parent.iterdir() if p.name.isdigit()]
            target = parent / str(max(taken, default=0) + 1)
            _set_version(tmp, target.name)
            try:
                os.rename(tmp, target)
            except OSError:
                if target.exists():  # another process took this version between listing and renaming
                    continue
                raise
            logger.info("saved %s version %s in %s", name, target.name, target)
            return target


def _set_version(folder: Path, version: str) -> None:
    info_path = folder / "info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["version"] = version
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def resolve_ref(ref: str) -> tuple[str, str | None]:
    """``(name, version)`` of ``"name"`` (version ``None``: the latest) or ``"name:version"``;
    ``ValueError`` when malformed."""
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"a model reference is 'name' or 'name:version'. Received: {ref!r}")
    name, sep, version = ref.partition(":")
    check_name(name)
    if sep and not (version.isdigit() and int(version) >= 1 and version == str(int(version))):
        raise ValueError(f"a model version is a positive integer such as '1'. Received: {ref!r}")
    return name, (version if sep else None)


def find_model(ref: str, state_dir: Path) -> Path:
    """The folder of ``ref`` (``"name"``: its latest version, or ``"name:version"``);
    :class:`ModelNotFound` when missing."""
    name, version = resolve_ref(ref)
    versions = model_versions(name, state_dir)
    if not versions:
        known = event_models(state_dir)
        listing = ", ".join(f"{n} (versions {', '.join(v)})" for n, v in known.items()) or "none"
        raise ModelNotFound(
            f"no event model named {name!r} in {models_dir(state_dir)}; trained event models: {listing}. "
            f"{DEFAULT_EVENT_MODEL!r} trains itself on first use; train others with train_event_model()"
        )
    if version is None:
        version = versions[-1]
    if version not in versions:
        raise ModelNotFound(f"event model {name!r} has no version {version}; its versions: {', '.join(versions)}")
    return models_dir(state_dir) / name / version
