"""Prometheus and Grafana in docker-compose.yml: the services, their mounted files, the scrape targets and the
provisioned dashboard (no engine runs here, so the dashboard is never loaded by Grafana itself; its metric
names are checked against a real worker's in tests/integration/test_model_quality.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from streamdl.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "streamdl.json"
PROMQL_WORDS = {"sum", "by", "rate", "increase", "max", "histogram_quantile", "le", "without", "on", "avg"}


def dashboard_metrics(path: Path = DASHBOARD) -> set[str]:
    """Every metric name the dashboard's queries read (the ``streamdl_*`` identifiers of each expression)."""
    names = set()
    for panel in json.loads(path.read_text())["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\bstreamdl_[a-z_]+\b", target["expr"]))
    return names


def mounted(service: str) -> dict[Path, str]:
    out = {}
    for volume in SERVICES[service]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[ROOT / source[2:]] = target
    return out


def test_prometheus_and_grafana_run_with_health_checks_and_their_files():
    for name in ("prometheus", "grafana"):
        assert SERVICES[name]["healthcheck"]["test"], f"{name} has no health check"
        for source in mounted(name):
            assert source.exists(), f"{name} mounts {source}, which is missing"
    assert mounted("grafana")[ROOT / "infra/grafana/dashboards"] == "/var/lib/grafana/dashboards"


def test_prometheus_scrapes_the_workers_the_archiver_and_the_web_page_on_their_metrics_ports():
    defaults = load_settings(env_file=None)
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: (job["dns_sd_configs"][0]["names"][0], job["dns_sd_configs"][0]["port"])
        for job in config["scrape_configs"]
    }
    assert targets["streamdl-worker"] == ("worker", defaults.metrics_port)
    assert targets["streamdl-archiver"] == ("archiver", defaults.archive_metrics_port)
    for service, _ in targets.values():
        assert service in SERVICES
        assert SERVICES[service]["environment"]["STREAMDL_METRICS_HOST"] == "0.0.0.0"
    # the web page serves /metrics on its own port, listening on the container's interfaces
    command = SERVICES["web"]["command"]
    assert command[:1] == ["serve"] and targets["streamdl-web"] == ("web", int(command[command.index("--port") + 1]))
    assert command[command.index("--host") + 1] == "0.0.0.0" and "web" in SERVICES["prometheus"]["depends_on"]


def test_the_dashboard_uses_the_provisioned_data_source_and_reads_only_streamdl_metrics():
    source = yaml.safe_load((ROOT / "infra/grafana/provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = source["datasources"]
    provider = yaml.safe_load((ROOT / "infra/grafana/provisioning/dashboards/streamdl.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    assert len(titles) == len(set(titles)) and len({p["id"] for p in dashboard["panels"]}) == len(titles)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            words = set(re.findall(r"\b[a-z_]+\b(?=\s*\()", target["expr"]))
            assert words <= PROMQL_WORDS, f"{panel['title']}: unknown functions {words - PROMQL_WORDS}"
    wanted = ("throughput", "lag", "batch size", "stage seconds", "dead letters", "alerts", "model version",
              "live accuracy", "drift")  # fmt: skip
    for word in wanted:
        assert any(word in t.lower() for t in titles), f"no panel for {word}"
    assert {"streamdl_quality_accuracy", "streamdl_drift", "streamdl_consumer_lag"} <= dashboard_metrics()
