"""Turn a model name into a ready-to-load handler: the one entry point of the model layer.

Names, in the order they are tried:

* ``"digits-cnn"`` (the default): trained on first use and cached under ``<state_dir>/models``;
* a Keras application (:data:`streamdl.models.keras_apps.APPLICATIONS`, case-insensitive), a featurizer with
  ``mode="featurize"`` or an ImageNet predictor with ``mode="classify"``;
* a path to a ``.keras`` file or a SavedModel directory (:mod:`streamdl.models.from_file`).

Nothing here reaches the internet (Keras application weights only with ``allow_download=True``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from streamdl.models import digits
from streamdl.models.errors import ModelNotFound
from streamdl.models.from_file import add_head, check_model_file, file_loader, load_file_parts
from streamdl.models.keras_apps import APPLICATIONS, application_loader, find_application, validate_mode
from streamdl.models.keras_handler import KerasImageHandler, Parts

DEFAULT_MODEL = digits.MODEL_NAME


def available_models() -> tuple[str, ...]:
    """Every model known by name (files are found by path)."""
    return (DEFAULT_MODEL, *APPLICATIONS)


def load_handler(
    name: str,
    *,
    state_dir: Path,
    batch_size: int,
    weights: str | os.PathLike | None = "imagenet",
    mode: str = "classify",
    mixed_precision: bool = False,
    head: str | os.PathLike | None = None,
    allow_download: bool = False,
) -> KerasImageHandler:
    """A handler for ``name``; call its ``load()`` (slow: builds, reads or trains) before predicting.

    Arguments and files are checked here, so a missing weights file or model fails fast:
    ``ValueError`` for a bad argument, :class:`ModelNotFound` for an unknown name or a missing file.

    Args:
        name: ``"digits-cnn"``, a Keras application name, or a path (see module docstring).
        state_dir: the settings' ``state_dir``; the digits model is cached below it.
        batch_size: the largest micro-batch; every call runs padded to this size.
        weights: Keras applications only: ``"imagenet"``, a ``.h5`` path, or ``None`` (random).
        mode: ``"classify"`` (probabilities, plus the embedding where the model has one)
            or ``"featurize"`` (embeddings only).
        mixed_precision: build under the ``mixed_float16`` policy (Keras applications; a saved
            file keeps the dtypes it was saved with). Outputs stay float32.
        head: a classifier head file (embedding -> probabilities) put after ``name`` used as a
            featurizer; needs ``mode="classify"``.
        allow_download: let a missing ImageNet weights file be downloaded into the Keras cache.
    """
    validate_mode(mode)
    if head is not None and mode != "classify":
        raise ValueError(f"a head classifies, so it needs mode='classify'. Received: mode={mode!r}, head={str(head)!r}")
    load = _source(
        str(name), state_dir=Path(state_dir), mode="featurize" if head is not None else mode,
        weights=weights, allow_download=allow_download,
    )  # fmt: skip
    if head is not None:
        load = _then(load, functools.partial(add_head, path=check_model_file(head)))
    return KerasImageHandler(load, batch_size=batch_size, mixed_precision=mixed_precision)


def _source(
    name: str, *, state_dir: Path, mode: str, weights: str | os.PathLike | None, allow_download: bool
) -> Callable[[], Parts]:
    if name == DEFAULT_MODEL:
        return functools.partial(_digits_parts, state_dir, mode)
    if find_application(name) is not None:
        return application_loader(name, mode=mode, weights=weights, allow_download=allow_download)
    if os.sep in name or "/" in name or name.endswith(".keras") or Path(name).exists():
        return file_loader(name, mode=mode)
    raise ModelNotFound(
        f"unknown model {name!r}; available: {', '.join(available_models())}, "
        "or the path of a .keras file or a TensorFlow SavedModel directory"
    )


def _digits_parts(state_dir: Path, mode: str) -> Parts:
    return load_file_parts(digits.ensure_digits_model(state_dir) / "model.keras", mode)


def _then(load: Callable[[], Parts], step: Callable[[Parts], Parts]) -> Callable[[], Parts]:
    return lambda: step(load())
