"""The offline default model ``digits-cnn``: a small Keras CNN trained on scikit-learn's digits.

The 8x8 digits (values 0..16) become 32x32 grayscale uint8 images through :func:`digit_to_array`;
:func:`digit_to_png` encodes exactly those pixels, so images produced for the stream and the images
the model was trained on are the same. The trained model is cached in
``<state_dir>/models/digits-cnn/1/`` (``model.keras`` and ``info.json``) and trained only once.
The pixel functions import neither TensorFlow nor Keras (cheap for producers).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from streamdl.models.cache import train_once

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

MODEL_NAME = "digits-cnn"
VERSION = "1"
INPUT_SIZE = (32, 32)
LABELS = tuple(str(d) for d in range(10))
SEED = 0
EPOCHS = 20
HOLDOUT = 0.2
MAX_SHIFT = 3
"""Training shifts each image by up to this many pixels (zero fill) each epoch."""

Progress = Callable[[int, int], None]
"""Called after each training epoch with ``(epochs_done, epochs)``."""

_train_lock = threading.Lock()


# --- Pixels -------------------------------------------------------------------------
def _digit_image(row: np.ndarray | list[float]) -> Image.Image:
    values = np.asarray(row, dtype=np.float64).reshape(8, 8)
    if values.min() < 0 or values.max() > 16:
        raise ValueError(f"digit values must lie in 0..16. Received: min={values.min()}, max={values.max()}")
    small = Image.fromarray(np.rint(values * 255 / 16).astype(np.uint8), mode="L")
    return small.resize(INPUT_SIZE[::-1], Image.Resampling.BILINEAR)


def digit_to_array(row: np.ndarray | list[float]) -> np.ndarray:
    """One digit (64 or 8x8 values 0..16) as the model sees it: ``(32, 32, 1)`` uint8."""
    return np.asarray(_digit_image(row), dtype=np.uint8)[:, :, None]


def digit_to_png(row: np.ndarray | list[float]) -> bytes:
    """One digit as a 32x32 grayscale PNG whose decoded pixels equal :func:`digit_to_array`."""
    buffer = io.BytesIO()
    _digit_image(row).save(buffer, format="PNG")
    return buffer.getvalue()


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as ``(n, 32, 32, 1)`` uint8 images and their ``(n,)`` int labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.stack([digit_to_array(row) for row in digits.data]), digits.target.astype(np.int64)


def split_digits(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The deterministic stratified split ``(x_train, x_holdout, y_train, y_holdout)`` (20% held out)."""
    from sklearn.model_selection import train_test_split

    images, labels = load_digit_images()
    return tuple(train_test_split(images, labels, test_size=HOLDOUT, stratify=labels, random_state=seed))  # type: ignore[return-value]


def digit_id(index: int) -> str:
    """The stable image id of sample digit ``index`` (the Kafka key the sample producer uses)."""
    return f"digits-{index:04d}"


def held_out_ids(seed: int = SEED) -> set[str]:
    """Ids of the digits :func:`split_digits` holds out from training (to score the model honestly)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    _, held = train_test_split(np.arange(len(labels)), test_size=HOLDOUT, stratify=labels, random_state=seed)
    return {digit_id(int(i)) for i in held}


# --- Model --------------------------------------------------------------------------
def build_digits_cnn() -> keras.Model:
    """The untrained network: uint8 ``(32, 32, 1)`` -> 64-d ``embedding`` -> 10 ``probabilities``."""
    import keras
    from keras import layers

    image = keras.Input(shape=(*INPUT_SIZE, 1), dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(image)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.MaxPooling2D(name="pool3")(x)
    x = layers.Flatten(name="flatten")(x)
    embedding = layers.Dense(64, activation="relu", name="embedding")(x)
    x = layers.Dropout(0.2, name="dropout")(embedding)
    probabilities = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(image, probabilities, name="digits_cnn")


def _shift(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by a random whole-pixel offset in ``[-MAX_SHIFT, MAX_SHIFT]``, zero-filled."""
    n, h, w, _ = images.shape
    pad = MAX_SHIFT
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and TensorFlow and make TensorFlow ops deterministic while training."""
    import keras
    import tensorflow as tf

    try:  # private, only to switch determinism off again afterwards
        from tensorflow.python.framework import config as tf_config

        was_on = tf_config.is_op_determinism_enabled()
    except (ImportError, AttributeError):
        tf_config, was_on = None, True
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_on and tf_config is not None:
            tf_config.disable_op_determinism()


def train_digits_cnn(
    out_dir: Path, *, seed: int = SEED, epochs: int = EPOCHS, progress: Progress | None = None
) -> dict:
    """Train on 80% of the digits, write ``model.keras`` and ``info.json`` to ``out_dir``; return the info."""
    import keras

    started = time.perf_counter()
    x_train, x_holdout, y_train, y_holdout = split_digits(seed)
    with _deterministic(seed):
        model = build_digits_cnn()
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
        rng = np.random.default_rng(seed)
        for epoch in range(epochs):
            model.fit(_shift(x_train, rng), y_train, batch_size=32, initial_epoch=epoch, epochs=epoch + 1, verbose=0)
            if progress is not None:
                progress(epoch + 1, epochs)
        predicted = model.predict(x_holdout, batch_size=256, verbose=0).argmax(axis=1)
    seconds = time.perf_counter() - started
    info = {
        "name": MODEL_NAME,
        "version": VERSION,
        "labels": list(LABELS),
        "input_size": list(INPUT_SIZE),
        "channels": 1,
        "holdout_accuracy": round(float((predicted == y_holdout).mean()), 4),
        "holdout_images": int(len(y_holdout)),
        "train_images": int(len(y_train)),
        "epochs": epochs,
        "train_seconds": round(seconds, 2),
        "seed": seed,
        "versions": {
            "python": platform.python_version(),
            **_versions("tensorflow", "keras", "numpy", "scikit-learn", "pillow"),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    (out_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _versions(*packages: str) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found


def digits_model_dir(state_dir: Path) -> Path:
    """Where the cached model lives: ``<state_dir>/models/digits-cnn/1``."""
    return Path(state_dir) / "models" / MODEL_NAME / VERSION


def ensure_digits_model(state_dir: Path, *, progress: Progress | None = None) -> Path:
    """The folder holding the trained ``model.keras`` and ``info.json``; trains only when not cached.

    Training writes to a temporary folder beside the cache and renames it into place, so a
    crash never leaves a half-written cache and concurrent trainers agree on one result.
    """
    final = digits_model_dir(state_dir)
    if _complete(final):
        logger.debug("using cached %s in %s", MODEL_NAME, final)
        return final
    trained: dict = {}

    def train(tmp: Path) -> None:
        logger.info("training %s (%d epochs, once); cache %s", MODEL_NAME, EPOCHS, final)
        trained.update(train_digits_cnn(tmp, progress=progress))

    if train_once(final, _complete, train, _train_lock):
        logger.info(
            "trained %s in %.1fs, held-out accuracy %.4f",
            MODEL_NAME,
            trained["train_seconds"],
            trained["holdout_accuracy"],
        )
    elif trained:
        logger.info("another process cached %s first; using it", MODEL_NAME)
    return final


def _complete(folder: Path) -> bool:
    return (folder / "model.keras").is_file() and (folder / "info.json").is_file()
