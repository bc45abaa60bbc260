"""What the command line prints besides results: log levels, library noise, exit codes, errors in the user's terms."""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from streamdl.errors import ServiceUnavailable, StreamdlError
from streamdl.settings import env_var

EXIT_CODES = {
    0: "done",
    1: "done, but nothing was found or some items were not sent",
    2: "bad input or settings: the message says which, and what to change",
    3: "a service did not answer (Kafka or Elasticsearch): the message names where it was looked for",
    4: "retrain: another retraining run is in progress",
    5: "retrain: too few labelled images to train on",
    130: "interrupted (Ctrl-C)",
}
"""Exit codes of every ``streamdl`` command."""

NOISY_LOGGERS = ("elastic_transport", "urllib3", "aiokafka", "kafka", "absl", "tensorflow", "h5py", "librdkafka")
"""Libraries whose retry and start-up logs bury the product's own message: shown with ``--log-level DEBUG`` only."""

NATIVE_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}
"""Variables that silence TensorFlow's C++ logs (level 3: its errors too, such as ``failed call to cuInit`` on a
machine without a GPU); read when TF loads. A value the user set wins; ``--log-level DEBUG`` sets none."""


def configure_logging(level: str) -> None:
    """Log at ``level``; below DEBUG the noisy libraries log their errors only, and TensorFlow's native
    start-up lines are off (set before TensorFlow is imported; a variable the user set is kept)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if level == "DEBUG":
        logging.getLogger("librdkafka").setLevel(logging.DEBUG)
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for var, value in NATIVE_QUIET.items():
        os.environ.setdefault(var, value)
    if "tensorflow" not in sys.modules and not any(isinstance(f, QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietImport("tensorflow"))


@contextmanager
def native_stderr_held() -> Iterator[None]:
    """File descriptor 2 goes to a temporary file for the block; what was written there is replayed
    only when the block raises. For native libraries that write to stderr before any setting applies
    (TensorFlow 2.17+: ``All log messages before absl::InitializeLog()``, oneDNN, CUDA probing)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class QuietImport(importlib.abc.MetaPathFinder):
    """Imports the module ``name`` (once, the first time anything imports it) under :func:`native_stderr_held`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one import; the real finders do the rest
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module: Any) -> None:
            with native_stderr_held():
                exec_module(module)

        spec.loader.exec_module = quiet_exec  # type: ignore[method-assign]
        return spec


def exit_code(exc: StreamdlError) -> int:
    """3 for a service that did not answer, 2 for anything else the user can fix."""
    return 3 if isinstance(exc, ServiceUnavailable) else 2


def in_user_terms(message: str, given: Mapping[str, str]) -> str:
    """``message`` with each setting's environment variable replaced by the flag the user typed for it
    (``given``: field -> flag), so the error names what the user can see on their own command line."""
    for field, flag in given.items():
        message = re.sub(rf"\b{env_var(field)}\b", flag, message)
    return message


def format_table(headers: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> str:
    """``rows`` under ``headers`` in columns as wide as their widest cell, two spaces apart (the last one
    left ragged); the columns numbered in ``right`` are right-aligned."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [
            str(c).rjust(w) if i in right else (str(c) if i == len(row) - 1 else str(c).ljust(w))
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)
