"""The Beam part of ``streamdl retrain`` runs in-process and reaches for nothing outside the machine.

Beam's ``DirectRunner`` (2.6x and later) first tries the PrismRunner, which downloads a Go binary
from GitHub; the retraining job names the in-process runner itself unless ``--runner`` is given.
Real Beam, a real (tiny) Keras model and a real Parquet archive in a temporary folder; only the
socket layer is guarded, refusing any address that is not loopback or a unix socket.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path

import keras
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.portability import prism_runner

from streamdl.connectors.archive import SCHEMA, file_name, filesystem, hour_dir, hour_start, list_files, put_table
from streamdl.models.digits import digit_to_png
from streamdl.streams.jobs import retrain_pipeline
from streamdl.streams.jobs.retrain_pipeline import ServedModel

IMAGES, EVENTS = "t-images", "t-events"
N = 12


def _is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", "localhost.localdomain", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def outside(monkeypatch) -> list[str]:
    """Every attempt to look up or connect to a non-loopback address, each refused with OSError."""
    attempts: list[str] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    create_connection, getaddrinfo = socket.create_connection, socket.getaddrinfo

    def check(family, address) -> None:
        if family == socket.AF_UNIX or not isinstance(address, tuple):
            return
        if not _is_local(address[0]):
            attempts.append(f"connect {address!r}")
            raise OSError(f"test guard: no outside connection ({address!r})")

    def guarded_connect(self, address):
        check(self.family, address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        check(self.family, address)
        return connect_ex(self, address)

    def guarded_create_connection(address, *args, **kwargs):
        check(socket.AF_INET, address)
        return create_connection(address, *args, **kwargs)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            attempts.append(f"lookup {host!r}")
            raise socket.gaierror(f"test guard: no outside name lookup ({host!r})")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "create_connection", guarded_create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


@pytest.fixture
def prism_runs(monkeypatch) -> list[str]:
    """Every time Beam chose the PrismRunner."""
    runs: list[str] = []
    original = prism_runner.PrismRunner.run_pipeline

    def run_pipeline(self, pipeline, options):
        runs.append(type(self).__name__)
        return original(self, pipeline, options)

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", run_pipeline)
    return runs


@pytest.fixture
def tiny_model(tmp_path: Path) -> ServedModel:
    """An 8x8 grey-scale classifier with an embedding layer, saved as a ``.keras`` file."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(4, name="embedding")(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    path = tmp_path / "tiny.keras"
    keras.Model(inputs, outputs).save(path)
    return ServedModel(str(path), str(tmp_path / "state"), None, 4, (8, 8), 1, 1_000_000, 1_000_000)


def _archive(root: Path) -> list[list]:
    fs, base = filesystem(str(root))
    ts_ms = 1_700_000_000_000
    rng = np.random.default_rng(0)

    def write(topic: str, keys: list[bytes], values: list[bytes]) -> None:
        rows = {
            "topic": [topic] * len(keys),
            "partition": [0] * len(keys),
            "offset": list(range(len(keys))),
            "timestamp_ms": [ts_ms] * len(keys),
            "key": keys,
            "value": values,
            "headers": [[] for _ in keys],
        }
        directory = f"{base}/{hour_dir(topic, hour_start(ts_ms))}"
        put_table(fs, directory, file_name(0, 0, len(keys) - 1), pa.table(rows, schema=SCHEMA))

    ids = [f"img-{i}" for i in range(N)]
    write(IMAGES, [i.encode() for i in ids], [digit_to_png(rng.integers(0, 16, 64)) for _ in ids])
    labels = [
        json.dumps({"id": f"l-{i}", "type": "label", "image_id": image_id, "label": str(i % 3)}).encode()
        for i, image_id in enumerate(ids)
    ]
    write(EVENTS, [f"l-{i}".encode() for i in range(N)], labels)
    return [[(str(root), f) for f in list_files(str(root), topic)] for topic in (IMAGES, EVENTS)]


def test_the_retraining_pipeline_runs_in_process_without_outside_connections(
    tmp_path: Path, tiny_model: ServedModel, outside: list[str], prism_runs: list[str]
) -> None:
    image_files, event_files = _archive(tmp_path / "archive")
    counters = retrain_pipeline.run(image_files, event_files, tiny_model, str(tmp_path / "out" / "part"))
    assert not outside, f"the retraining pipeline reached outside the machine: {outside}"
    assert not prism_runs, "Beam chose the PrismRunner (it downloads a binary from GitHub)"
    assert counters["labelled_images"] == N and counters.get("corrupt_files", 0) == 0
    assert list((tmp_path / "out").glob("part*.parquet"))


def test_the_local_runner_is_named_unless_the_user_names_one() -> None:
    pipeline_options = retrain_pipeline.pipeline_options
    options = pipeline_options([])
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_running_mode == "in_memory"
    tuned = pipeline_options(["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    assert tuned.view_as(StandardOptions).runner == "FnApiRunner"
    assert tuned.view_as(DirectOptions).direct_running_mode == "multi_threading"
    assert pipeline_options(["--runner=FlinkRunner", "--flink_master=h:8081"]).view_as(StandardOptions).runner == (
        "FlinkRunner"
    )
    assert pipeline_options(["--runner", "DirectRunner"]).view_as(StandardOptions).runner == "DirectRunner"
