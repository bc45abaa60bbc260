"""docker-compose.yml's opt-in Flink profile agrees with itself and with the product (no engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from streamdl.streams.cli.main import build_parser
from streamdl.streams.jobs.runners import option, prepare

ROOT = Path(__file__).resolve().parents[2]
SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
FLINK = ("flink-jobmanager", "flink-taskmanager", "beam-worker-pool", "beam-job-server", "retrain-flink")


def test_the_flink_services_are_opt_in():
    for name in FLINK:
        assert SERVICES[name]["profiles"] == ["flink"], name
    assert all("profiles" not in SERVICES[name] for name in ("kafka", "elasticsearch", "worker", "archiver"))


def test_the_job_server_matches_the_flink_cluster_and_the_installed_beam():
    from importlib.metadata import version

    flink = re.fullmatch(r"flink:(\d+\.\d+)\.\d+-java17", SERVICES["flink-jobmanager"]["image"])
    assert flink and SERVICES["flink-taskmanager"]["image"] == SERVICES["flink-jobmanager"]["image"]
    job_server = SERVICES["beam-job-server"]
    assert job_server["image"] == f"apache/beam_flink{flink.group(1)}_job_server:{version('apache-beam')}"
    assert "--flink-master=flink-jobmanager:8081" in job_server["command"]
    taskmanager = SERVICES["flink-taskmanager"]["environment"]["FLINK_PROPERTIES"]
    assert "jobmanager.rpc.address: flink-jobmanager" in taskmanager


def test_the_retraining_run_reaches_the_job_server_and_the_harness(tmp_path):
    run = SERVICES["retrain-flink"]
    args = build_parser().parse_args(run["command"])
    beam_args = [a for a in args.beam_args if a != "--"]
    assert option(beam_args, "runner") == "PortableRunner"
    host, port = option(beam_args, "job_endpoint").split(":")
    assert host == "beam-job-server" and f"--job-port={port}" in SERVICES["beam-job-server"]["command"]
    pool = SERVICES["beam-worker-pool"]
    assert option(beam_args, "environment_type") == "EXTERNAL"
    assert option(beam_args, "environment_config") == "localhost:50000" and "--service_port=50000" in pool["command"]
    assert pool["network_mode"] == "service:flink-taskmanager"  # the TaskManager's localhost
    # the run and the harness see the same files: the archive and the job's temporary output
    assert pool["volumes"] == run["volumes"] and pool["environment"]["TMPDIR"] == run["environment"]["TMPDIR"]
    assert run["environment"]["TMPDIR"].startswith(run["volumes"][0].split(":")[1])

    from streamdl.settings import load_settings

    assert prepare(load_settings(env_file=None), beam_args, say=print)[: len(beam_args)] == beam_args
