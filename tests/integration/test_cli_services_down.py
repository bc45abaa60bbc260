"""``streamdl worker`` with Elasticsearch down and Kafka up (the real one): the error line alone, no retry
logs of the Elasticsearch client, no TensorFlow start-up lines; exit 3 within ``connect_timeout_secs``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from streamdl.infra.process import free_port

pytestmark = pytest.mark.integration


def test_worker_with_elasticsearch_down_says_so_alone(stack, tmp_path):
    prefix = f"tdown{uuid.uuid4().hex[:8]}."
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMDL_", "TF_CPP"))}
    env.update(STREAMDL_CONNECT_TIMEOUT_SECS="2", STREAMDL_WORKER_AGENTS="images", STREAMDL_TOPIC_PREFIX=prefix)
    argv = [
        "worker",
        "--es-url",
        f"http://127.0.0.1:{port}",
        "--metrics-port",
        "0",
        "--state-dir",
        str(stack.state_dir),
    ]
    try:
        run = subprocess.run(
            [sys.executable, "-m", "streamdl", *argv], env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        from streamdl.connectors.kafka_admin import admin_client

        admin = admin_client(stack)
        made = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if made:
            admin.delete_topics(made, operation_timeout=30)
    assert run.returncode == 3, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        f"streamdl: error: Elasticsearch at http://127.0.0.1:{port} did not answer (Connection refused); is it "
        "running? Start it with 'streamdl stack up', or set --es-url."
    )
    foreign = [line for line in lines[:-1] if " streamdl." not in line]
    assert not foreign, foreign
