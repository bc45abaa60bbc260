"""The Prometheus endpoints: a worker and an archiver have different default ports, listen on loopback
by default, and a port already taken is one line naming the setting and its variable (no traceback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamdl.errors import SettingsError
from streamdl.infra.process import free_port
from streamdl.prometheus import check_metrics_port, metrics_port, serve_metrics
from streamdl.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("STREAMDL_"):
            monkeypatch.delenv(key)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on (127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_worker_and_archiver_default_ports_differ_and_listen_on_loopback():
    s = load_settings(env_file=None)
    assert metrics_port(s, "worker") == s.metrics_port == 9464
    assert metrics_port(s, "archive") == s.archive_metrics_port == 9465
    assert s.metrics_host == "127.0.0.1"


@pytest.mark.parametrize(
    "setting, variable",
    [("metrics_port", "STREAMDL_METRICS_PORT"), ("archive_metrics_port", "STREAMDL_ARCHIVE_METRICS_PORT")],
)
def test_a_taken_port_is_one_line_naming_the_setting_and_its_variable(taken_port: int, setting: str, variable: str):
    s = load_settings({setting: taken_port}, env_file=None)
    for call in (check_metrics_port, serve_metrics):
        with pytest.raises(SettingsError) as caught:
            call(s, setting)
        message = str(caught.value)
        assert "\n" not in message and f"port {taken_port} on 127.0.0.1 is already in use" in message
        assert f"{setting} ({variable})" in message and "0 for no metrics endpoint" in message


def test_an_address_that_cannot_be_bound_names_metrics_host():
    s = load_settings({"metrics_host": "192.0.2.1", "metrics_port": free_port()}, env_file=None)  # TEST-NET-1
    with pytest.raises(
        SettingsError, match=r"cannot serve metrics on 192\.0\.2\.1:\d+: .*metrics_host \(STREAMDL_METRICS_HOST\)"
    ):
        check_metrics_port(s)


def test_the_endpoint_serves_on_loopback_by_default():
    s = load_settings({"archive_metrics_port": free_port()}, env_file=None)
    server = serve_metrics(s, "archive_metrics_port")
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{s.archive_metrics_port}/metrics", timeout=5) as response:
            assert b"streamdl_build_info" in response.read()
    finally:
        server.shutdown()
        server.server_close()
    assert serve_metrics(load_settings({"metrics_port": 0}, env_file=None)) is None


def test_archive_run_beside_a_worker_on_its_port_says_so_in_one_line(taken_port: int, tmp_path: Path):
    """``streamdl archive run`` while a worker holds the archiver's port: exit 2, one line, no traceback,
    before anything is contacted (the Kafka address here answers nothing)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "STREAMDL_STATE_DIR": str(tmp_path),
        "STREAMDL_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "STREAMDL_ARCHIVE_METRICS_PORT": str(taken_port),
    }
    done = subprocess.run(
        [sys.executable, "-m", "streamdl", "archive", "run"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("streamdl:")]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    assert f"metrics port {taken_port} on 127.0.0.1 is already in use" in lines[0]
    assert "archive_metrics_port (STREAMDL_ARCHIVE_METRICS_PORT)" in lines[0]
