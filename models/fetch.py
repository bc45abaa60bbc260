"""``streamdl models fetch NAME``: the one explicit download of a Keras application's ImageNet weights.

The file goes into the Keras cache folder (:func:`~streamdl.models.keras_apps.keras_cache_dir`), where
:func:`~streamdl.models.keras_apps.resolve_weights` finds it; workers never download. Each file is checked
against the MD5 that Keras publishes for it (the ``file_hash`` its applications pass to ``get_file``)
before it is moved into place; a file Keras publishes no hash for (MobileNetV2's) is kept with its SHA-256
printed, so it can be compared by hand. Offline, the download fails within ``timeout`` naming the URL and
the manual steps.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from streamdl.errors import StreamdlError
from streamdl.models.keras_apps import MODES, application_spec, keras_cache_dir

PUBLISHED_MD5 = {
    "resnet50_weights_tf_dim_ordering_tf_kernels.h5": "2cb95161c43110f7111970584f804107",
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5": "4d473c1dd8becc155b73f8504c6f6626",
    "inception_v3_weights_tf_dim_ordering_tf_kernels.h5": "9a0d58056eeedaa3f26cb7ebd46da564",
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5": "bcbd6486424b2319ff4ef7d526e38f63",
    "xception_weights_tf_dim_ordering_tf_kernels.h5": "0a58e3b7378bc2990ea3b43d5981f1f6",
    "xception_weights_tf_dim_ordering_tf_kernels_notop.h5": "b0042744bf5b25fce3cb969f33bebb97",
    "weights_mobilenet_v3_small_224_1.0_float.h5": "8768d4c2e7dee89b9d02b2d03d65d862",
    "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5": "d3e8ec802a04aa4fc771ee12a9a9b836",
    "weights_mobilenet_v3_large_224_1.0_float.h5": "59e551e166be033d707958cf9e29a6a7",
    "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5": "07fb09a5933dd0c8eaafa16978110389",
    "efficientnetb0.h5": "902e53a9f72be733fc0bcb005b3ebbac",
    "efficientnetb0_notop.h5": "50bc09e76180e00e4465e1a485ddc09d",
}
"""The ``file_hash`` values of ``keras.src.applications`` (Keras 3) for the files :data:`APPLICATIONS` uses."""

CHUNK = 1 << 20


class FetchError(StreamdlError):
    """A weights file could not be downloaded or did not match its published hash."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    verified: bool
    """Whether the file matched a published hash (``False``: Keras publishes none for it)."""
    downloaded: bool
    """``False`` when a verified copy was in the cache already."""


def fetch_weights(name: str, mode: str = "featurize", *, mirror: str | None = None, timeout: float = 30.0) -> Fetched:
    """Download the ImageNet weights of Keras application ``name`` for ``mode`` (``featurize``: without the
    classifier; ``classify``: with it) into the Keras cache, from Keras' own URL or ``mirror`` (a folder URL
    holding the same file names)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}. Received: mode={mode!r}")
    spec = application_spec(name)
    file = spec.weights_file(mode)
    url = mirror.rstrip("/") + "/" + file if mirror else spec.weights_url(mode)
    dest = keras_cache_dir() / file
    expected = PUBLISHED_MD5.get(file)
    if dest.is_file() and expected and _digest(dest, "md5") == expected:
        return Fetched(dest, _digest(dest, "sha256"), True, False)
    return download_verified(url, dest, expected, timeout=timeout)


def download_verified(url: str, dest: Path, md5: str | None, *, timeout: float = 30.0) -> Fetched:
    """Download ``url`` to ``dest`` through a temporary file beside it, moved into place only when its MD5
    is ``md5`` (``None``: no published hash to check)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(CHUNK):
                out.write(chunk)
        got = _digest(tmp, "md5")
        if md5 is not None and got != md5:
            raise FetchError(
                f"{url} gave a file whose MD5 is {got}, not the published {md5}: refused, nothing was written "
                f"to {dest.parent}. Try again, or download it by hand and check it"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(
            f"could not download {url}: {reason}. Without internet here: download that URL on a machine that has "
            f"it, then copy the file to {dest} (or pass its path as STREAMDL_MODEL_WEIGHTS / weights=)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return Fetched(dest, _digest(dest, "sha256"), md5 is not None, True)


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
