"""Named Keras applications (MobileNet, EfficientNet, ResNet, Inception, Xception) as featurizers or predictors.

* ``featurize``: ``include_top=False, pooling="avg"`` -> the pooled embedding.
* ``classify``: ``include_top=True`` -> the 1000 ImageNet probabilities. Their labels are the
  class names of ``imagenet_class_index.json`` when that file is in the Keras cache folder
  (``$KERAS_HOME/models`` or ``~/.keras/models``), else ``imagenet:<index>``: fetching it, as
  ``keras.applications.imagenet_utils.decode_predictions`` does, would need the internet.

Weights are ``"imagenet"`` (the file Keras would download, looked up in the Keras cache folder;
downloaded only with ``allow_download=True``), a path to an ``.h5`` file in the same layout, or
``None`` (random initialisation: benchmarks and tests). Nothing here reaches the internet unless
asked to.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from streamdl.models.errors import ModelNotFound
from streamdl.models.handler import ModelInfo
from streamdl.models.keras_handler import Parts

logger = logging.getLogger(__name__)

MODES = ("featurize", "classify")
IMAGENET_CLASS_INDEX = "imagenet_class_index.json"
_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_build_lock = threading.Lock()


@dataclass(frozen=True)
class AppSpec:
    """One Keras application: how to build it, preprocess for it, and which weight files it uses."""

    name: str
    """Constructor name in ``keras.applications``, e.g. ``"MobileNetV2"``."""
    module: str
    """Submodule of ``keras.applications`` holding its ``preprocess_input``."""
    input_size: int
    embedding_size: int
    weights_top: str
    """ImageNet weights file with the classifier (``include_top=True``), as Keras names it."""
    weights_no_top: str
    """ImageNet weights file without the classifier (``include_top=False``)."""
    url_folder: str

    @property
    def constructor(self) -> Callable[..., keras.Model]:
        return getattr(keras.applications, self.name)

    @property
    def preprocess(self) -> Callable[[Any], Any]:
        return getattr(keras.applications, self.module).preprocess_input

    def weights_file(self, mode: str) -> str:
        return self.weights_top if mode == "classify" else self.weights_no_top

    def weights_url(self, mode: str) -> str:
        return self.url_folder + self.weights_file(mode)


APPLICATIONS: dict[str, AppSpec] = {
    spec.name: spec
    for spec in (
        AppSpec("MobileNetV2", "mobilenet_v2", 224, 1280,
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", _GCS + "mobilenet_v2/"),
        AppSpec("MobileNetV3Small", "mobilenet_v3", 224, 576,
                "weights_mobilenet_v3_small_224_1.0_float.h5",
                "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", _GCS + "mobilenet_v3/"),
        AppSpec("MobileNetV3Large", "mobilenet_v3", 224, 960,
                "weights_mobilenet_v3_large_224_1.0_float.h5",
                "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", _GCS + "mobilenet_v3/"),
        AppSpec("EfficientNetB0", "efficientnet", 224, 1280,
                "efficientnetb0.h5", "efficientnetb0_notop.h5", "https://storage.googleapis.com/keras-applications/"),
        AppSpec("ResNet50", "resnet50", 224, 2048,
                "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "resnet/"),
        AppSpec("InceptionV3", "inception_v3", 299, 2048,
                "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "inception_v3/"),
        AppSpec("Xception", "xception", 299, 2048,
                "xception_weights_tf_dim_ordering_tf_kernels.h5",
                "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "xception/"),
    )
}  # fmt: skip


def keras_cache_dir() -> Path:
    """The folder Keras keeps downloaded weights in: ``$KERAS_HOME/models`` or ``~/.keras/models``.

    Read at each call (Keras itself reads ``KERAS_HOME`` once, at import).
    """
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return Path(home) / "models"


def find_application(name: str) -> AppSpec | None:
    """The spec of a Keras application by case-insensitive name, or ``None``."""
    return {key.lower(): spec for key, spec in APPLICATIONS.items()}.get(name.lower())


def application_spec(name: str) -> AppSpec:
    """The spec of a Keras application (case-insensitive name); :class:`ModelNotFound` lists the known ones."""
    found = find_application(name)
    if found is None:
        raise ModelNotFound(f"unknown Keras application {name!r}; known: {', '.join(APPLICATIONS)}")
    return found


def validate_mode(mode: str) -> str:
    """``mode`` itself, or ``ValueError`` when it is not one of :data:`MODES`."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}. Received: mode={mode!r}")
    return mode


def resolve_weights(
    spec: AppSpec, mode: str, weights: str | os.PathLike | None, *, allow_download: bool = False
) -> Path | None:
    """The weights file to load (``None``: random initialisation). Checks only files, builds nothing.

    Raises ``ValueError`` for a ``weights`` argument of the wrong kind and :class:`ModelNotFound`
    naming the file and the folder when a file is missing.
    """
    validate_mode(mode)
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "The `weights` argument should be either `None` (random initialization), 'imagenet' "
            f"(pre-training on ImageNet), or the path to an .h5 weights file. Received: weights={weights!r}"
        )
    role = "predictor" if mode == "classify" else "featurizer"
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if path.suffix not in (".h5", ".hdf5"):
            raise ValueError(f"The weights file must be an .h5 or .hdf5 file. Received: weights={str(weights)!r}")
        if not path.is_file():
            raise ModelNotFound(
                f"{spec.name} {role}: weights file {str(path)!r} does not exist. Pass the path of an existing "
                f"file laid out like Keras' {spec.weights_file(mode)!r}, weights='imagenet', or weights=None."
            )
        return path
    folder = keras_cache_dir()
    path = folder / spec.weights_file(mode)
    if path.is_file():
        return path
    if allow_download:
        logger.info("downloading %s to %s", spec.weights_url(mode), folder)
        return Path(
            keras.utils.get_file(
                path.name, spec.weights_url(mode), cache_dir=str(folder.parent), cache_subdir=folder.name
            )
        )
    raise ModelNotFound(
        f"{spec.name} {role} needs ImageNet weights file {path.name!r} in {folder}/ "
        f"(or point STREAMDL_MODEL_WEIGHTS, or weights=, at /path/to/{path.name}). "
        f"Run 'streamdl models fetch {spec.name}' once where there is internet (it checks the published hash), "
        f"or download {spec.weights_url(mode)} on such a machine and copy it there."
    )


def imagenet_labels(folder: Path | None = None) -> tuple[str, ...]:
    """The 1000 ImageNet class names from ``imagenet_class_index.json`` in ``folder``, else ``imagenet:<i>``."""
    path = (folder or keras_cache_dir()) / IMAGENET_CLASS_INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        return tuple(str(index[str(i)][1]) for i in range(1000))
    except FileNotFoundError:
        logger.info("no %s: ImageNet labels are named imagenet:<index>", path)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        logger.warning("ignoring unreadable %s (%s): ImageNet labels are named imagenet:<index>", path, exc)
    return tuple(f"imagenet:{i}" for i in range(1000))


def application_loader(
    name: str, *, mode: str = "classify", weights: str | os.PathLike | None = "imagenet", allow_download: bool = False
) -> Callable[[], Parts]:
    """Check name, mode and weights now; return the function that builds the :class:`Parts` later."""
    spec = application_spec(name)
    path = resolve_weights(spec, mode, weights, allow_download=allow_download)
    version = "random" if path is None else "imagenet" if weights == "imagenet" else path.name
    return functools.partial(build_application, spec, mode, path, version)


def build_application(spec: AppSpec, mode: str, weights_path: Path | None, version: str) -> Parts:
    """Build the application: random weights, or ``weights_path`` holding ImageNet-layout weights."""
    validate_mode(mode)
    size = spec.input_size
    kwargs: dict[str, Any] = {"input_shape": (size, size, 3), "weights": None}
    kwargs.update({"include_top": True} if mode == "classify" else {"include_top": False, "pooling": "avg"})
    with _build_lock:
        if weights_path is None:
            model = spec.constructor(**kwargs)
        else:
            model = _build_with_weights(spec, mode, weights_path, kwargs)
    info = ModelInfo(
        name=spec.name,
        version=version,
        input_size=(size, size),
        channels=3,
        embedding_size=spec.embedding_size,
        labels=imagenet_labels() if mode == "classify" else (),
        extra={"source": "keras.applications", "application": spec.name, "mode": mode,
               "weights": str(weights_path) if weights_path else "random",
               "preprocess": f"keras.applications.{spec.module}.preprocess_input"},
    )  # fmt: skip
    if mode == "classify":
        featurizer, head = split_at_pooling(model)
        return Parts(info=info, featurizer=featurizer, head=head, preprocess=spec.preprocess)
    return Parts(info=info, featurizer=model, preprocess=spec.preprocess)


def split_at_pooling(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Split a classifier at its global average pooling: ``(images -> pooled embedding, embedding -> probabilities)``.

    The two share the original layers (and weights), so a predictor also yields the embedding
    that similarity search indexes. The layers after the pooling must form a simple chain, as
    in every Keras application listed here.
    """
    from keras import layers

    pools = [i for i, layer in enumerate(model.layers) if isinstance(layer, layers.GlobalAveragePooling2D)]
    if not pools:
        raise ValueError(f"{model.name}: no GlobalAveragePooling2D layer to take the embedding from")
    pool = model.layers[pools[-1]]
    pooled_shape = tuple(pool.output.shape[1:])
    featurizer = keras.Model(
        model.inputs, layers.Flatten(name="embedding")(pool.output), name=f"{model.name}_featurizer"
    )
    embedding = keras.Input(shape=(int(np.prod(pooled_shape)),), name="embedding")
    x = layers.Reshape(pooled_shape)(embedding) if len(pooled_shape) > 1 else embedding
    for layer in model.layers[pools[-1] + 1 :]:
        x = layer(x)
    return featurizer, keras.Model(embedding, x, name=f"{model.name}_head")


def _build_with_weights(spec: AppSpec, mode: str, weights_path: Path, kwargs: dict[str, Any]) -> keras.Model:
    """Build as with ``weights="imagenet"`` but load ``weights_path`` instead of downloading.

    Keras builds some applications differently for ImageNet weights (EfficientNet adds a rescaling
    layer), so the constructor must see ``weights="imagenet"``; its module's ``file_utils.get_file``
    is answered with ``weights_path`` while it runs. Callers hold ``_build_lock``.
    """
    module = sys.modules[spec.constructor.__module__]
    real = module.file_utils
    asked: list[str] = []

    class _LocalFiles:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def get_file(fname: str, *args: Any, **kwargs: Any) -> str:
            asked.append(fname)
            return str(weights_path)

    module.file_utils = _LocalFiles()
    try:
        model = spec.constructor(**{**kwargs, "weights": "imagenet"})
    finally:
        module.file_utils = real
    if asked != [spec.weights_file(mode)]:
        logger.warning(
            "Keras asked for weights file(s) %s for %s, expected %r", asked, spec.name, spec.weights_file(mode)
        )
    logger.info("loaded %s weights from %s", spec.name, weights_path)
    return model
