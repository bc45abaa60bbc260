"""Where the local stack keeps its files, without starting anything."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from streamdl.errors import StackError
from streamdl.infra.services import Elasticsearch, Kafka, reachable_by_nobody
from streamdl.settings import load_settings


def test_reachable_by_nobody(tmp_path: Path):
    open_dir = Path(
        tempfile.mkdtemp(prefix="streamdl-open-", dir="/tmp")
    )  # pytest's own tmp_path is under a 0700 folder
    try:
        open_dir.chmod(0o755)
        assert reachable_by_nobody(open_dir / "not-yet-created")
    finally:
        open_dir.rmdir()
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    assert not reachable_by_nobody(closed / "state")


@pytest.mark.skipif(os.geteuid() != 0, reason="the relocation applies only when root runs the stack")
def test_elasticsearch_moves_out_of_a_folder_nobody_cannot_reach(tmp_path: Path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    settings = load_settings({"state_dir": closed / "state"}, env_file=None)
    es, kafka = Elasticsearch(settings), Kafka(settings)
    assert kafka.home == closed / "state" / "kafka"
    assert es.home.parent.parent == Path("/var/tmp") and es.home.name == "elasticsearch"
    assert es.home == Elasticsearch(settings).home  # stable: the same state folder maps to the same place
    assert not es.home.parent.exists()  # nothing is created until the stack is started


def test_the_local_stack_refuses_a_remote_address():
    settings = load_settings({"kafka_bootstrap_servers": "kafka.example.com:9092"}, env_file=None)
    with pytest.raises(StackError, match="listens on 127.0.0.1"):
        Kafka(settings)


def test_kafka_cluster_ids_never_look_like_a_flag():
    """About 1 in 64 urlsafe-base64 ids starts with '-'; the storage tool then fails with 'expected one argument'."""
    from streamdl.infra.services import kafka_cluster_id

    ids = [kafka_cluster_id() for _ in range(5000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
