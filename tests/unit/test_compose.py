"""docker-compose.yml is well-formed and agrees with the settings and the CLI (no engine runs here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from streamdl.settings import Settings, load_settings
from streamdl.streams.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def published_ports(service: dict) -> set[int]:
    return {int(p.rsplit(":", 2)[-2]) for p in service.get("ports", [])}


def test_services_and_health_checks():
    assert {"kafka", "elasticsearch", "kibana", "worker"} <= set(SERVICES)
    for name in ("kafka", "elasticsearch", "kibana", "worker", "web"):
        assert SERVICES[name]["healthcheck"]["test"], f"{name} has no health check"


def test_versions_and_ports_match_the_local_stack_defaults():
    defaults = load_settings(env_file=None)
    assert SERVICES["kafka"]["image"].endswith(f":{defaults.kafka_version}")
    assert SERVICES["elasticsearch"]["image"].endswith(f":{defaults.es_version}")
    assert SERVICES["kibana"]["image"].endswith(f":{defaults.es_version}")
    assert defaults.kafka_address[1] in published_ports(SERVICES["kafka"])
    assert defaults.es_address[1] in published_ports(SERVICES["elasticsearch"])
    assert defaults.metrics_port in published_ports(SERVICES["worker"])
    # the endpoints listen on 127.0.0.1 by default; in a container the published port needs every interface
    assert SERVICES["worker"]["environment"]["STREAMDL_METRICS_HOST"] == "0.0.0.0"


def test_worker_environment_is_valid_settings_pointing_at_compose_services(monkeypatch):
    env = SERVICES["worker"]["environment"]
    assert all(k.startswith("STREAMDL_") for k in env)
    fields = {f"STREAMDL_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, f"unknown settings: {set(env) - fields}"
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    settings = load_settings(env_file=None)
    host, port = settings.kafka_address
    assert host == "kafka" and port in {29092, 9092}
    assert settings.es_address == ("elasticsearch", 9200)
    assert settings.topic("images") == "streamdl.images"


def test_worker_is_built_from_infra_dockerfile_and_runs_real_commands():
    parser = build_parser()
    for name in ("worker", "init", "archiver", "web"):
        build = SERVICES[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
        parser.parse_args(SERVICES[name]["command"])  # a real subcommand (exits on an unknown one)
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    for folder in ("streamdl", "streams", "models", "connectors", "infra"):
        assert f"COPY {folder} ./{folder}" in dockerfile
