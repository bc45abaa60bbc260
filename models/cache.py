"""Train once, cache for good: a model is trained into a temporary folder beside its cache and renamed
into place, so a crash never leaves a half-written cache and concurrent trainers agree on one result."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

Complete = Callable[[Path], bool]
"""Whether a folder holds a whole saved model."""


def rename_into_place(tmp: Path, final: Path, complete: Complete) -> bool:
    """Rename the folder ``tmp`` to ``final``; ``False`` when another process completed ``final`` first
    (``tmp`` is then left for the caller to remove). Leftovers of an older crash at ``final`` are removed."""
    if complete(final):
        return False
    shutil.rmtree(final, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if complete(final):
            return False
        raise
    return True


def train_once(final: Path, complete: Complete, train: Callable[[Path], None], lock: threading.Lock) -> bool:
    """Make sure ``final`` holds a complete model: when it does not, ``train(tmp)`` writes one into a temporary
    sibling folder, which is renamed into place. ``True`` when this call trained the cached model."""
    with lock:
        if complete(final):
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            train(tmp)
            return rename_into_place(tmp, final, complete)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
