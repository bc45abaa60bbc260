"""Models from files: a ``.keras`` file or a TensorFlow SavedModel directory.

A file serves as

* a **featurizer** (``mode="featurize"``): images -> embedding (the layer named ``embedding_layer``,
  default ``"embedding"`` when the model has one, else the model's output);
* a **whole model** (``mode="classify"``): images -> probabilities (the output must be softmax
  probabilities), also giving the embedding of ``embedding_layer`` when there is one;
* a **classifier head** (:func:`load_head`): embedding -> probabilities, put after a featurizer.

The model takes pixel values 0..255 in its input dtype (uint8 or float32): any rescaling must be
inside the model. A SavedModel has no layers, so it gives its output named ``embedding`` /
``probabilities`` (or its only output), and a whole SavedModel gives probabilities only.
Name, version and labels come from an ``info.json`` beside the ``.keras`` file (inside a SavedModel
directory) when there is one: ``{"name": ..., "version": ..., "labels": [...]}``; else the file
name, a content fingerprint and ``"0"``, ``"1"``, ... A head whose ``info.json`` has ``model_name``
and ``model_version`` (a registered retrained version, :mod:`streamdl.models.registry`) serves under them;
either way ``extra["featurizer"]`` names the featurizer, whose embedding space the head keeps.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from streamdl.models.errors import ModelNotFound
from streamdl.models.handler import ModelInfo
from streamdl.models.keras_apps import validate_mode
from streamdl.models.keras_handler import Parts

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_LAYER = "embedding"
SAVED_MODEL_ENDPOINT = "serving_default"


def is_model_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``.keras`` file or a SavedModel directory (``saved_model.pb`` inside)."""
    path = Path(path)
    return (path.is_file() and path.suffix == ".keras") or (path / "saved_model.pb").is_file()


def check_model_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path`, or :class:`ModelNotFound` saying what is missing."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFound(f"model file {str(path)!r} does not exist")
    if not is_model_file(path):
        raise ModelNotFound(
            f"{str(path)!r} is neither a .keras file nor a TensorFlow SavedModel directory (with saved_model.pb)"
        )
    return path


def file_loader(
    path: str | os.PathLike, *, mode: str = "classify", embedding_layer: str | None = None
) -> Callable[[], Parts]:
    """Check path and mode now; return the function that loads the :class:`Parts` later."""
    validate_mode(mode)
    return functools.partial(load_file_parts, check_model_file(path), mode, embedding_layer)


def load_file_parts(path: Path, mode: str, embedding_layer: str | None = None) -> Parts:
    """Load ``path`` as a featurizer (``mode="featurize"``) or a whole model (``mode="classify"``)."""
    validate_mode(mode)
    model = _load(path)
    image = model.inputs[0]
    _, h, w, c = _image_shape(path, image)
    embedding = _embedding_tensor(path, model, embedding_layer)
    if mode == "featurize":
        features = embedding if embedding is not None else _single_output(path, model, "embedding")
        _check_rank2(path, features, "embedding")
        featurizer = keras.Model(model.inputs, features, name="featurizer")
        parts_kwargs: dict[str, Any] = {"featurizer": featurizer}
        embedding_size, labels = int(features.shape[-1]), ()
    else:
        output = _single_output(path, model, "probabilities")
        _check_rank2(path, output, "probabilities")
        labels = _labels(path, int(output.shape[-1]))
        if embedding is not None:
            _check_rank2(path, embedding, "embedding")
            parts_kwargs = {
                "featurizer": keras.Model(model.inputs, embedding, name="featurizer"),
                "head": _split_head(path, embedding, output),
            }
            embedding_size = int(embedding.shape[-1])
        else:
            parts_kwargs, embedding_size = {"head": keras.Model(model.inputs, output, name="classifier")}, 0
    meta = _meta(path)
    info = ModelInfo(
        name=str(meta.get("name") or path.stem),
        version=str(meta.get("version") or _fingerprint(path)),
        input_size=(h, w),
        channels=c,
        embedding_size=embedding_size,
        labels=labels,
        extra={
            **{
                key: str(value)
                for key, value in meta.items()
                if isinstance(value, (str, int, float)) and key not in ("name", "version")
            },
            "source": str(path),
            "mode": mode,
            "input_dtype": str(image.dtype),
        },  # fmt: skip
    )
    return Parts(info=info, **parts_kwargs)


def load_head(path: str | os.PathLike) -> keras.Model:
    """A classifier head from a file: ``(n, d)`` embeddings -> ``(n, k)`` probabilities."""
    path = check_model_file(path)
    model = _load(path)
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 2:
        raise ValueError(
            f"{path}: a classifier head takes one (n, embedding_size) input. "
            f"Received: input shapes={[tuple(t.shape) for t in model.inputs]}"
        )
    output = _single_output(path, model, "probabilities")
    _check_rank2(path, output, "probabilities")
    return keras.Model(model.inputs, output, name="head")


def add_head(parts: Parts, path: Path) -> Parts:
    """``parts`` (a featurizer) followed by the classifier head in ``path``; labels from the head's ``info.json``."""
    if parts.featurizer is None or parts.head is not None:
        raise ValueError(
            f"{parts.info.name}: a head goes after a featurizer only (load the model with mode='featurize')"
        )
    head = load_head(path)
    width = head.inputs[0].shape[-1]
    if width != parts.info.embedding_size:
        raise ValueError(
            f"{path}: the head takes embeddings of size {width} but {parts.info.name} gives {parts.info.embedding_size}"
        )
    meta = _meta(path)
    if meta.get("model_name") and meta.get("model_version"):  # a registered version of the model it extends
        name, version = str(meta["model_name"]), str(meta["model_version"])
    else:
        name = f"{parts.info.name}+{meta.get('name') or path.stem}"
        version = f"{parts.info.version}+{meta.get('version') or _fingerprint(path)}"
    info = dataclasses.replace(
        parts.info,
        name=name,
        version=version,
        labels=_labels(path, int(head.output.shape[-1])),
        extra={
            **parts.info.extra,
            "mode": "classify",
            "head": str(path),
            "featurizer": parts.info.extra.get("featurizer") or f"{parts.info.name}-{parts.info.version}",
        },
    )
    return dataclasses.replace(parts, head=head, info=info)


# --- Helpers --------------------------------------------------------------------------------
def _load(path: Path) -> keras.Model:
    """The file as a Keras model; a SavedModel becomes ``Input -> TFSMLayer`` (outputs as it names them)."""
    if path.is_file():
        logger.info("loading Keras model %s", path)
        return keras.saving.load_model(path, compile=False)
    logger.info("loading SavedModel %s", path)
    layer = keras.layers.TFSMLayer(str(path), call_endpoint=SAVED_MODEL_ENDPOINT, name="saved_model")
    _, specs = layer.call_endpoint_fn.structured_input_signature
    if len(specs) != 1:
        raise ValueError(f"{path}: a SavedModel must take exactly one input. Received: inputs={list(specs)}")
    (spec,) = specs.values()
    x = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name, name="input")
    outputs = layer(x)
    return keras.Model(x, outputs if isinstance(outputs, dict) else {"output_0": outputs}, name=path.name)


def _image_shape(path: Path, tensor: keras.KerasTensor) -> tuple[int, int, int, int]:
    shape = tuple(tensor.shape)
    if len(shape) != 4 or None in shape[1:] or shape[3] not in (1, 3):
        raise ValueError(
            f"{path}: the model must take images of a fixed size with 1 or 3 channels, (n, h, w, c). "
            f"Received: input shape={shape}"
        )
    return shape  # type: ignore[return-value]


def _embedding_tensor(path: Path, model: keras.Model, layer_name: str | None) -> keras.KerasTensor | None:
    """Output of ``layer_name`` (or of a layer named ``embedding``), or ``None``."""
    names = [layer.name for layer in model.layers]
    if isinstance(model.output, dict):  # a SavedModel: outputs stand for layers
        key = layer_name or DEFAULT_EMBEDDING_LAYER
        if key in model.output:
            return model.output[key]
        if layer_name is not None:
            raise ValueError(f"{path}: no output named {layer_name!r}; outputs: {', '.join(model.output)}")
        return None
    if layer_name is None:
        return model.get_layer(DEFAULT_EMBEDDING_LAYER).output if DEFAULT_EMBEDDING_LAYER in names else None
    if layer_name not in names:
        raise ValueError(f"{path}: no layer named {layer_name!r}; layers: {', '.join(names)}")
    return model.get_layer(layer_name).output


def _single_output(path: Path, model: keras.Model, role: str) -> keras.KerasTensor:
    outputs = model.output
    if isinstance(outputs, dict):
        if role in outputs:
            return outputs[role]
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        raise ValueError(f"{path}: no output named {role!r} among {', '.join(outputs)}")
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ValueError(f"{path}: the model must have one output ({role}). Received: {len(outputs)} outputs")
        return outputs[0]
    return outputs


def _check_rank2(path: Path, tensor: keras.KerasTensor, role: str) -> None:
    if len(tensor.shape) != 2 or tensor.shape[-1] is None:
        raise ValueError(
            f"{path}: {role} must have shape (n, size); pool or flatten first. Received: shape={tuple(tensor.shape)}"
        )


def _split_head(path: Path, embedding: keras.KerasTensor, output: keras.KerasTensor) -> keras.Model:
    """The part of a whole model from its embedding to its output."""
    try:
        return keras.Model(embedding, output, name="head")
    except ValueError as exc:
        raise ValueError(
            f"{path}: the output does not depend on the embedding layer alone, so the model cannot be split "
            f"there ({exc}); use mode='featurize' or name another layer"
        ) from exc


def _info_json(path: Path) -> Path:
    return (path if path.is_dir() else path.parent) / "info.json"


def _meta(path: Path) -> dict[str, Any]:
    info = _info_json(path)
    if not info.is_file():
        return {}
    try:
        meta = json.loads(info.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{info}: not valid JSON ({exc})") from exc
    return meta if isinstance(meta, dict) else {}


def _labels(path: Path, count: int) -> tuple[str, ...]:
    labels = _meta(path).get("labels")
    if labels is None:
        return tuple(str(i) for i in range(count))
    if not isinstance(labels, list) or len(labels) != count:
        raise ValueError(f"{_info_json(path)}: 'labels' must list {count} class names, one per output column")
    return tuple(str(label) for label in labels)


def _fingerprint(path: Path) -> str:
    """12 hex digits of SHA-256 over the ``.keras`` file, or a SavedModel's graph and variable index."""
    files = [path] if path.is_file() else [path / "saved_model.pb", path / "variables" / "variables.index"]
    digest = hashlib.sha256()
    for file in files:
        if file.is_file():
            with file.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]
