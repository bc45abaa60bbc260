"""The one concrete :class:`~streamdl.models.handler.ModelHandler`: a Keras featurizer and/or head over image batches.

Every model source (the digits CNN, Keras applications, ``.keras`` files, SavedModels) builds
:class:`Parts`; :class:`KerasImageHandler` composes them into one multi-output Keras model and
one ``tf.function`` with a fixed batch shape, so a batch costs one call and no retracing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from streamdl.models.handler import BatchResult, ModelInfo

logger = logging.getLogger(__name__)

Preprocess = Callable[[tf.Tensor], tf.Tensor]
"""Maps float32 pixel values 0..255 ``(n, h, w, c)`` to what the first model takes."""

_gpu_lock = threading.Lock()
_gpus_configured = False
_policy_lock = threading.Lock()


@dataclass(frozen=True)
class Parts:
    """What a model source hands a handler.

    ``featurizer`` maps images to ``(n, info.embedding_size)`` embeddings; ``head`` maps those
    embeddings to ``(n, len(info.labels))`` probabilities, or the images themselves when there
    is no featurizer. At least one of the two is set.
    """

    info: ModelInfo
    featurizer: keras.Model | None = None
    head: keras.Model | None = None
    preprocess: Preprocess | None = None
    """``None``: the first model takes the pixels as they are (cast to its input dtype)."""


def enable_gpu_memory_growth() -> None:
    """Let TensorFlow grow GPU memory on demand instead of taking it all (once per process)."""
    global _gpus_configured
    with _gpu_lock:
        if _gpus_configured:
            return
        _gpus_configured = True
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError as exc:  # the GPU was initialised before this call
                logger.warning("could not enable memory growth on %s: %s", gpu.name, exc)


@contextlib.contextmanager
def dtype_policy(name: str | None) -> Iterator[None]:
    """Set the global Keras dtype policy to ``name`` (e.g. ``"mixed_float16"``) while models are built."""
    if name is None:
        yield
        return
    with _policy_lock:
        previous = keras.mixed_precision.dtype_policy()
        keras.mixed_precision.set_dtype_policy(name)
        try:
            yield
        finally:
            keras.mixed_precision.set_dtype_policy(previous)


class KerasImageHandler:
    """Run featurizer and head on uint8 image batches padded to a fixed ``batch_size``.

    ``load_parts`` is called once by :meth:`load` (it may train or read large files).
    After :meth:`load`, :meth:`predict_batch` may be called from any thread, also concurrently:
    the traced function has no Python state and TensorFlow releases the GIL while it runs.
    """

    def __init__(self, load_parts: Callable[[], Parts], *, batch_size: int, mixed_precision: bool = False) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
        self._load_parts = load_parts
        self.batch_size = batch_size
        self.mixed_precision = bool(mixed_precision)
        self._load_lock = threading.Lock()
        self._info: ModelInfo | None = None
        self._model: keras.Model | None = None
        self._head: Callable[[tf.Tensor], tf.Tensor] | None = None
        self._fns: dict[int, Callable[[tf.Tensor], dict[str, tf.Tensor]]] = {}
        self._shape: tuple[int, int, int] = (0, 0, 0)
        self.buckets = bucket_sizes(batch_size)
        """The fixed batch shapes the model runs at: powers of two below ``batch_size``, and ``batch_size``."""
        self.trace_count = 0
        """How often the batch function was traced: once per bucket during :meth:`load`, never after."""

    # --- ModelHandler -----------------------------------------------------------
    def load(self) -> None:
        """Build the parts, compose them into one model and trace the batch function (idempotent)."""
        with self._load_lock:
            if self._fns:
                return
            enable_gpu_memory_growth()
            if self.mixed_precision and not tf.config.list_physical_devices("GPU"):
                logger.warning("mixed precision without a GPU is slow; consider mixed_precision=False")
            with dtype_policy("mixed_float16" if self.mixed_precision else None):
                parts = self._load_parts()
                model = _compose(parts)
            mixed = self.mixed_precision and any(layer.compute_dtype == "float16" for layer in _weighted_layers(model))
            if self.mixed_precision and not mixed:
                logger.warning("%s keeps the dtypes it was saved with: mixed precision has no effect", parts.info.name)
            h, w = parts.info.input_size
            self._shape = (h, w, parts.info.channels)
            fns = {size: self._trace(model, parts.preprocess, size) for size in self.buckets}
            for size, fn in fns.items():  # trace and warm up every shape now, never while serving
                fn(tf.zeros((size, *self._shape), tf.uint8))
            info = parts.info
            if mixed:
                info = dataclasses.replace(info, extra={**info.extra, "precision": "mixed_float16"})
            self._model, self._info, self._fns = model, info, fns
            self._head = _trace_head(parts.head) if parts.featurizer is not None and parts.head is not None else None
            logger.info(
                "loaded %s version %s: input %sx%sx%s, embedding %d, %d labels, batch %d%s",
                parts.info.name,
                parts.info.version,
                h,
                w,
                parts.info.channels,
                parts.info.embedding_size,
                len(parts.info.labels),
                self.batch_size,
                ", mixed_float16" if mixed else "",
            )

    def info(self) -> ModelInfo:
        """Describe the model (after :meth:`load`)."""
        if self._info is None:
            raise RuntimeError("call load() before info()")
        return self._info

    def predict_batch(self, images: np.ndarray) -> BatchResult:
        """Embeddings and probabilities of ``(n, h, w, channels)`` uint8 images, any ``n``.

        Chunks of ``batch_size`` rows run one at a time; a shorter last chunk is zero-padded to the
        smallest bucket that holds it (7 rows run as 8, not as ``batch_size``).
        Raises ``ValueError`` when the shape or dtype is not what :meth:`info` describes.
        """
        if not self._fns or self._info is None:
            raise RuntimeError("call load() before predict_batch()")
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self._shape or images.dtype != np.uint8:
            raise ValueError(
                f"{self._info.name} takes uint8 images of shape (n, {', '.join(map(str, self._shape))}). "
                f"Received: shape={images.shape}, dtype={images.dtype}"
            )
        n = len(images)
        embeddings = np.zeros((n, self._info.embedding_size), np.float32)
        probabilities = np.zeros((n, len(self._info.labels)), np.float32)
        for start in range(0, n, self.batch_size):
            chunk = images[start : start + self.batch_size]
            rows = len(chunk)
            size = next(b for b in self.buckets if b >= rows)
            if rows < size:
                padded = np.zeros((size, *self._shape), np.uint8)
                padded[:rows] = chunk
                chunk = padded
            out = self._fns[size](tf.constant(chunk))
            if "embeddings" in out:
                embeddings[start : start + rows] = out["embeddings"].numpy()[:rows]
            if "probabilities" in out:
                probabilities[start : start + rows] = out["probabilities"].numpy()[:rows]
        return BatchResult(embeddings=embeddings, probabilities=probabilities)

    def classify_embeddings(self, embeddings: np.ndarray) -> np.ndarray | None:
        """The head alone on ``(n, embedding_size)`` embeddings of this model's featurizer: ``(n, labels)``
        probabilities, or ``None`` when the model is not a featurizer followed by a head. One small call: a
        shadow or canary head on the champion's featurizer reuses the champion's embeddings."""
        if self._head is None:
            return None
        return self._head(tf.constant(np.asarray(embeddings, np.float32))).numpy()

    # --- Extras -------------------------------------------------------------------
    @property
    def model(self) -> keras.Model:
        """The composed model: pixels (after preprocessing) -> ``{"embeddings", "probabilities"}``."""
        if self._model is None:
            raise RuntimeError("call load() first")
        return self._model

    def _trace(
        self, model: keras.Model, preprocess: Preprocess | None, size: int
    ) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
        """The batch function for exactly ``size`` images: its fixed signature makes a retrace impossible."""
        input_dtype = model.inputs[0].dtype

        @tf.function(input_signature=[tf.TensorSpec((size, *self._shape), tf.uint8, name="images")])
        def run(images: tf.Tensor) -> dict[str, tf.Tensor]:
            self.trace_count += 1  # Python side effect: runs only while tracing
            x = images if preprocess is None else preprocess(tf.cast(images, tf.float32))
            outputs = model(tf.cast(x, input_dtype), training=False)
            return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}

        return run


def _trace_head(head: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """The head as one traced function over any number of embedding rows (traced once, at load)."""
    width = int(head.inputs[0].shape[-1])

    @tf.function(input_signature=[tf.TensorSpec((None, width), tf.float32, name="embeddings")])
    def run(embeddings: tf.Tensor) -> tf.Tensor:
        return tf.cast(head(tf.cast(embeddings, head.inputs[0].dtype), training=False), tf.float32)

    run(tf.zeros((1, width), tf.float32))
    return run


def bucket_sizes(batch_size: int) -> tuple[int, ...]:
    """``(1, 2, 4, ..., batch_size)``: the padded batch shapes for a maximum batch of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size}")
    sizes = [1 << i for i in range(batch_size.bit_length()) if 1 << i < batch_size]
    return (*sizes, batch_size)


def _weighted_layers(model: keras.Model) -> Iterator[keras.Layer]:
    """The layers holding weights, inside nested models too."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _weighted_layers(layer)
        elif layer.weights:
            yield layer


def _compose(parts: Parts) -> keras.Model:
    """One Keras model with outputs ``embeddings`` (featurizer) and ``probabilities`` (head)."""
    first = parts.featurizer if parts.featurizer is not None else parts.head
    if first is None:
        raise ValueError(f"{parts.info.name}: a model needs a featurizer, a head or both")
    x = keras.Input(shape=first.inputs[0].shape[1:], dtype=first.inputs[0].dtype, name="pixels")
    outputs: dict[str, keras.KerasTensor] = {}
    features = x
    if parts.featurizer is not None:
        features = outputs["embeddings"] = parts.featurizer(x)
    if parts.head is not None:
        outputs["probabilities"] = parts.head(features)
    for key, expected in (("embeddings", parts.info.embedding_size), ("probabilities", len(parts.info.labels))):
        shape = tuple(outputs[key].shape) if key in outputs else (None, 0)
        if len(shape) != 2 or shape[1] != expected:
            raise ValueError(
                f"{parts.info.name}: {key} must have shape (n, {expected}) as the model info says. "
                f"Received: shape={shape}"
            )
    return keras.Model(x, outputs, name=re.sub(r"[^A-Za-z0-9_.-]", "_", parts.info.name))
