"""The Helm chart (infra/helm/streamdl): ``helm lint`` and ``helm template`` with the real helm (built from the
Go module proxy by ``make test``'s setup step), the rendered manifests validated against the Kubernetes
OpenAPI schemas (kubernetes-validate, offline, strict), and what the product needs from them checked
against the settings. KEDA's ScaledObject is a custom resource with no schema here: its fields are checked
by hand. Nothing here talks to a cluster.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from streamdl.infra.gotools import HELM
from streamdl.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "infra" / "helm" / "streamdl"
K8S_VERSION = "1.30.0"
REQUIRED = {
    "image.repository": "registry.example/streamdl",
    "image.tag": "0.1.0",
    "kafka.bootstrapServers": "kafka-0.kafka:9092,kafka-1.kafka:9092",
    "elasticsearch.url": "https://es.example:9200",
}


@pytest.fixture(scope="module")
def helm() -> Path:
    """The cached helm binary; built here when the setup step did not (a failure to build fails the tests)."""
    return HELM.ensure(load_settings(env_file=None).tools_dir, say=print)


def run_helm(helm: Path, *args: str, values: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    given = {**REQUIRED, **(values or {})}
    sets = [f"--set={k}={v.replace(',', chr(92) + ',')}" for k, v in given.items() if v is not None]
    if args[0] == "template":
        sets.append(f"--kube-version={K8S_VERSION}")
    return subprocess.run([str(helm), *args, str(CHART), *sets], capture_output=True, text=True, timeout=120)


def render(helm: Path, values: dict[str, str] | None = None) -> list[dict]:
    done = run_helm(helm, "template", values=values)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_helm_lint_passes(helm):
    done = run_helm(helm, "lint", "--strict")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_every_rendered_manifest_is_valid_kubernetes(helm):
    docs = render(
        helm,
        {
            "workers.images.gpu": "1",
            "secrets.files.STREAMDL_ES_PASSWORD_FILE": "es-password",
            "podSecurityContext.fsGroup": "10001",
        },
    )
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: checked in test_keda_scales_on_lag_within_the_partition_count
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 4 and {"CronJob", "ConfigMap", "PersistentVolumeClaim", "Service"} <= set(kinds)
    assert kinds.count("PodDisruptionBudget") == 2 and checked == len(docs)
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    pods += [d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for d in docs if d["kind"] == "CronJob"]
    assert len(pods) == 5 and all(pod["securityContext"] == {"fsGroup": 10001} for pod in pods)


def test_settings_come_from_a_configmap_the_product_accepts(helm, monkeypatch):
    docs = render(helm, {"settings.STREAMDL_MAX_BATCH_SIZE": "128"})
    (config,) = by_kind(docs, "ConfigMap").values()
    fields = {f"STREAMDL_{name.upper()}" for name in Settings.model_fields}
    assert set(config["data"]) <= fields, set(config["data"]) - fields
    for key, value in config["data"].items():
        monkeypatch.setenv(key, value)
    settings = load_settings(env_file=None)
    assert settings.kafka_bootstrap_servers == REQUIRED["kafka.bootstrapServers"]
    assert settings.max_batch_size == 128 and settings.metrics_host == "0.0.0.0"


def test_secrets_are_mounted_files_named_by_the_file_variables(helm, tmp_path, monkeypatch):
    docs = render(
        helm,
        {"secrets.create.kafka-password": "s3cret", "secrets.files.STREAMDL_KAFKA_PASSWORD_FILE": "kafka-password"},
    )
    (secret,) = by_kind(docs, "Secret").values()
    assert secret["stringData"] == {"kafka-password": "s3cret"}
    for deployment in by_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        path = Path(env["STREAMDL_KAFKA_PASSWORD_FILE"])
        mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
        assert path.parent == Path(mount["mountPath"]) and mount["readOnly"]
        volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert {i["path"] for i in volume["secret"]["items"]} == {path.name}
    # the product reads the variable the chart sets
    (tmp_path / "kafka-password").write_text("s3cret\n")
    monkeypatch.setenv("STREAMDL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMDL_KAFKA_USERNAME", "streamdl")
    monkeypatch.setenv("STREAMDL_KAFKA_PASSWORD_FILE", str(tmp_path / "kafka-password"))
    assert load_settings(env_file=None).kafka_password.get_secret_value() == "s3cret"


def test_workers_scale_apart_with_probes_on_the_metrics_port_and_optional_gpus(helm):
    docs = render(helm, {"workers.images.gpu": "2", "workers.events.replicas": "3"})
    deployments = by_kind(docs, "Deployment")
    workers = {name.rsplit("-", 1)[1]: d for name, d in deployments.items() if "-worker-" in name}
    assert set(workers) == {"images", "events"} and workers["events"]["spec"]["replicas"] == 3
    (config,) = by_kind(docs, "ConfigMap").values()
    for stream, deployment in workers.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["worker"]
        assert {"name": "STREAMDL_WORKER_AGENTS", "value": stream} in container["env"]
        port = next(p for p in container["ports"] if p["name"] == "metrics")["containerPort"]
        assert str(port) == config["data"]["STREAMDL_METRICS_PORT"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert gpus == (2 if stream == "images" else None)
        assert container["resources"]["requests"]["cpu"]
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for p in pdbs.values()} == {
        "worker-images",
        "worker-events",
    }
    (cron,) = by_kind(docs, "CronJob").values()
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][:2] == ["retrain", "--"] and cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_keda_scales_on_lag_within_the_partition_count(helm):
    docs = render(
        helm,
        {
            "kafka.partitions.images": "8",
            "workers.images.autoscaling.enabled": "true",
            "workers.images.autoscaling.maxReplicas": "8",
        },
    )
    (scaled,) = by_kind(docs, "ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]["name"]
    deployment = by_kind(docs, "Deployment")[target]
    assert "replicas" not in deployment["spec"]  # KEDA owns the count
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka" and trigger["metadata"]["topic"] == "streamdl.images"
    assert trigger["metadata"]["consumerGroup"] == "streamdl-workers"
    assert trigger["metadata"]["bootstrapServers"] == REQUIRED["kafka.bootstrapServers"]
    assert int(trigger["metadata"]["lagThreshold"]) > 0
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= 8

    autoscaled = {"workers.images.autoscaling.enabled": "true", "workers.images.autoscaling.maxReplicas": "9"}
    too_many = run_helm(helm, "template", values=autoscaled)
    assert too_many.returncode != 0
    assert "workers.images.autoscaling.maxReplicas (9) must be <= kafka.partitions.images (4)" in too_many.stderr


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("kafka.bootstrapServers", "bootstrapServers"),
        ("elasticsearch.url", "url"),
        ("image.repository", "repository"),
        ("image.tag", "tag"),
    ],
)
def test_a_missing_required_value_fails_naming_it(helm, missing, named):
    done = run_helm(helm, "template", values={missing: None})
    assert done.returncode != 0
    parent = missing.rsplit(".", 1)[0]
    assert parent in done.stderr and named in done.stderr, done.stderr


def test_a_malformed_bootstrap_list_fails_naming_the_value(helm):
    done = run_helm(helm, "template", values={"kafka.bootstrapServers": "kafka-without-port"})
    assert done.returncode != 0 and "bootstrapServers" in done.stderr, done.stderr
