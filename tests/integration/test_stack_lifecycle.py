"""The local stack's lifecycle on its own ports and state folder: up, up again, status, down,
stale pid files, a taken port. (The session's shared stack is left alone.)"""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest

from streamdl.errors import StackError
from streamdl.infra.stack import LocalStack
from streamdl.settings import load_settings

pytestmark = pytest.mark.integration

KAFKA_PORT, ES_PORT = 29092, 29200


def new_state_dir(settings) -> Path:
    """A fresh state folder whose ``dist`` is the project's (the unpacked Kafka and Elasticsearch are shared)."""
    shared = settings.state_dir.resolve() / "dist"
    shared.mkdir(parents=True, exist_ok=True)  # absent when the session reuses a stack started elsewhere
    state = settings.state_dir.resolve() / "test-stacks" / uuid.uuid4().hex[:8]
    state.mkdir(parents=True)
    (state / "dist").symlink_to(shared)
    return state


@pytest.fixture
def own_stack(settings):
    """A second stack in a fresh state folder (sharing the unpacked distributions), always stopped after."""
    state = new_state_dir(settings)
    own = load_settings(
        {
            "state_dir": state,
            "kafka_bootstrap_servers": f"127.0.0.1:{KAFKA_PORT}",
            "es_url": f"http://127.0.0.1:{ES_PORT}",
            "es_heap": "512m",
            "kafka_heap": "256m",
        },
        env_file=None,
    )
    stack = LocalStack(own, say=print)
    yield stack
    stack.down()
    shutil.rmtree(state, ignore_errors=True)


def states(stack: LocalStack) -> dict[str, str]:
    return {row.name: row.state for row in stack.status()}


def test_up_twice_status_down_up_again(own_stack, stack):
    assert states(own_stack) == {"kafka": "stopped", "elasticsearch": "stopped"}
    first = own_stack.up()
    assert all(v.startswith("started") for v in first.values()), first
    assert states(own_stack) == {"kafka": "running", "elasticsearch": "running"}
    pids = {r.name: r.pid for r in own_stack.status()}

    assert own_stack.up() == {"kafka": "already running", "elasticsearch": "already running"}
    assert {r.name: r.pid for r in own_stack.status()} == pids
    assert all(r.rss_bytes > 50 * 2**20 for r in own_stack.status())

    # Another checkout (another state folder) on the same ports reuses the running services and leaves them alone.
    other_state = own_stack.settings.state_dir / "other-checkout"
    other = LocalStack(own_stack.settings.model_copy(update={"state_dir": other_state}), say=print)
    assert all(v.startswith("already running (external") for v in other.up().values())
    assert states(other) == {"kafka": "running (external)", "elasticsearch": "running (external)"}
    assert other.down() == {"kafka": "not running", "elasticsearch": "not running"}
    assert states(own_stack) == {"kafka": "running", "elasticsearch": "running"}

    assert own_stack.down() == {"kafka": "stopped", "elasticsearch": "stopped"}
    assert states(own_stack) == {"kafka": "stopped", "elasticsearch": "stopped"}
    for port in (KAFKA_PORT, ES_PORT):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after down"

    # A pid file left by a crash, naming a process that is not ours, is detected and replaced.
    kafka = own_stack.service("kafka")
    kafka.pid_file.write_text("1\n")
    assert states(own_stack)["kafka"] == "stale pid file"
    again = own_stack.up()
    assert all(v.startswith("started") for v in again.values()), again
    assert states(own_stack) == {"kafka": "running", "elasticsearch": "running"}
    assert own_stack.service("kafka").pid() not in (None, 1)


def test_taken_port_fails_clearly(own_stack, stack):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", KAFKA_PORT))
        blocker.listen()
        with pytest.raises(StackError, match=f"port {KAFKA_PORT} on 127.0.0.1 is taken"):
            own_stack.up()
    own_stack.down()


def test_unhealthy_service_times_out_with_its_log(settings, stack):
    """A service that never becomes healthy is stopped and its log tail is in the error."""
    state = new_state_dir(settings)
    try:
        # Kafka's heap far too small for the broker: it starts, then dies or never answers.
        bad = load_settings(
            {
                "state_dir": state,
                "kafka_bootstrap_servers": "127.0.0.1:29192",
                "kafka_heap": "8m",
                "stack_timeout_secs": 30,
            },
            env_file=None,
        )
        bad_stack = LocalStack(bad)
        kafka = bad_stack.service("kafka")
        kafka.prepare()
        kafka.start()
        with pytest.raises(StackError, match=r"(?s)kafka (exited while starting|did not become healthy).*Last lines"):
            bad_stack._wait_healthy(kafka, deadline=time.monotonic() + 30)
        assert kafka.pid() is None
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_missing_java_or_maven_is_named(monkeypatch, tmp_path):
    from streamdl.infra import fetch

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(StackError, match="Java 17"):
        fetch.find_java()
    with pytest.raises(StackError, match="Maven"):
        fetch.fetch_kafka(tmp_path / "dist", "3.9.1", say=lambda m: None)
