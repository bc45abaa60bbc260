"""The local stack's inner ports (Kafka's KRaft controller, Elasticsearch's transport) follow the public ones by
default, are settable, and a clash names the setting. Nothing is started."""

from __future__ import annotations

import socket

import pytest

from streamdl.errors import StackError
from streamdl.infra.process import LOWEST_PORT, free_port, outgoing_ports_start, port_is_free
from streamdl.infra.services import Elasticsearch, Kafka
from streamdl.settings import load_settings


def test_inner_ports_follow_the_public_ones_by_default(tmp_path):
    settings = load_settings(
        {"state_dir": tmp_path, "kafka_bootstrap_servers": "127.0.0.1:19092", "es_url": "http://127.0.0.1:19200"},
        env_file=None,
    )
    assert Kafka(settings).ports == [19092, 19093] and Elasticsearch(settings).ports == [19200, 19300]


def test_inner_ports_are_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMDL_KAFKA_CONTROLLER_PORT", "29093")
    monkeypatch.setenv("STREAMDL_ES_TRANSPORT_PORT", "29300")
    settings = load_settings({"state_dir": tmp_path}, env_file=None)
    assert Kafka(settings).ports == [9092, 29093] and Elasticsearch(settings).ports == [9200, 29300]


def test_an_inner_port_equal_to_the_public_one_is_refused(tmp_path):
    settings = load_settings(
        {"state_dir": tmp_path, "kafka_controller_port": 9092, "es_transport_port": 9200}, env_file=None
    )
    with pytest.raises(StackError, match="STREAMDL_KAFKA_CONTROLLER_PORT"):
        _ = Kafka(settings).ports
    with pytest.raises(StackError, match="STREAMDL_ES_TRANSPORT_PORT"):
        _ = Elasticsearch(settings).ports


def test_a_taken_inner_port_names_its_setting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        settings = load_settings(
            {
                "state_dir": tmp_path,
                "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
                "kafka_controller_port": busy,
            },
            env_file=None,
        )
        with pytest.raises(StackError, match=rf"port {busy} .* move kafka with STREAMDL_KAFKA_CONTROLLER_PORT\."):
            Kafka(settings).start()


def test_free_ports_lie_below_the_ports_of_outgoing_connections():
    # a port the system picks (bind to 0) is one a client connection can take before a test's server listens
    # there: the job server's second port was taken so once in CI
    for count in (1, 2, 3):
        first = free_port(count=count)
        assert LOWEST_PORT <= first and first + count <= outgoing_ports_start()
        assert all(port_is_free("127.0.0.1", first + i) for i in range(count))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert sock.getsockname()[1] >= outgoing_ports_start()  # what free_port used to return
