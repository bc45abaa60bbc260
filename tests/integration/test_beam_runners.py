"""The retraining job on a portable Beam runner against the in-process local runner.

One archive (digits written with the product's ArchiveWriter, a label event for each, one truncated
image file), retrained twice from a fresh registry: once on the local runner, once through
``--runner=PortableRunner --job_endpoint=...`` on the job server ``streamdl stack up --with prism``
starts (Beam's Prism, a separate process built from the Go module proxy) with the SDK harness in
LOOPBACK mode: the same portable job API and options that Flink's and Spark's Beam job servers take. Both register a
head of equal test accuracy (within 0.01) with the same counters. A job server that does not answer
fails the run naming the runner, and nothing is registered.

Flink itself is not run here: Beam's Flink (and Spark) job server jars are not served by the Maven
registry this project reaches (see docs/beam-runners.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.retrain import write_archive
from streamdl.connectors.archive import archive_root, list_files
from streamdl.connectors.kafka_admin import admin_client
from streamdl.infra.gotools import installed_prism
from streamdl.infra.process import free_port
from streamdl.infra.stack import LocalStack
from streamdl.models.registry import Registry
from streamdl.streams.jobs.retrain import retrain
from streamdl.streams.jobs.runners import RetrainJobFailed, option, prepare

pytestmark = [pytest.mark.integration, pytest.mark.portable]

IMAGES = 400
ONE_HEAD = {"search": "random", "trials": 1}
"""One seeded head candidate: the runners are compared here, not the search (bench.retrain times the full grid)."""


@pytest.fixture(scope="module")
def archive(stack, tmp_path_factory):
    """An archive of IMAGES labelled digits with one image file cut in half (a corrupt file)."""
    folder = tmp_path_factory.mktemp("runners")
    tag = f"t{int(time.time() * 1000) % 10**9}"
    settings = stack.model_copy(
        update={"topic_prefix": f"{tag}.", "archive_url": str(folder / "archive"), "retrain_min_labels": 50}
    )
    write_archive(settings.archive_url, settings, IMAGES)
    files = list_files(archive_root(settings), settings.topic("images"))
    assert len(files) >= 2, files
    victim = Path(files[-1].path)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    yield settings, folder
    admin = admin_client(settings)
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tag)]
    if topics:
        admin.delete_topics(topics, operation_timeout=30)


def fresh(settings, folder: Path, name: str):
    """The archive's settings with a registry of their own (so each run starts from the base model)."""
    return settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{folder / f'{name}.db'}"})


@pytest.fixture(scope="module")
def job_server(stack, tmp_path_factory):
    """``streamdl stack up --with prism``'s job server, in a state folder of this module, on free ports (prism
    listens on the port and the next)."""
    folder = tmp_path_factory.mktemp("stack")
    own = stack.model_copy(update={"state_dir": folder, "job_server_port": free_port(count=2)})
    local = LocalStack(own, say=print, extra=("prism",))
    local.up()  # Kafka and Elasticsearch: the shared ones, reused; the job server: started
    prism = local.service("prism")
    assert prism.pid() is not None, prism.log_tail()
    yield f"localhost:{own.job_server_port}"
    assert prism.stop() == "stopped"


def test_a_portable_job_server_and_the_local_runner_register_the_same_head(archive, job_server):
    settings, folder = archive
    t = time.perf_counter()
    local = retrain(fresh(settings, folder, "local"), say=print, **ONE_HEAD)
    local_s = time.perf_counter() - t
    t = time.perf_counter()
    portable = retrain(
        fresh(settings, folder, "portable"),
        beam_args=["--runner=PortableRunner", f"--job_endpoint={job_server}", "--environment_type=LOOPBACK"],
        say=print,
        **ONE_HEAD,
    )
    portable_s = time.perf_counter() - t
    print(f"\nlocal runner {local_s:.1f}s {local.seconds}\nPrism job server {portable_s:.1f}s {portable.seconds}")
    assert local.version == portable.version == "2"
    assert local.counters["corrupt_files"] == 1 and 0 < local.counters["labelled_images"] < IMAGES
    listed = [list_files(archive_root(settings), settings.topic(t)) for t in ("images", "events")]
    assert local.counters["files"] == sum(map(len, listed)) - 1  # every readable file, from both readers
    assert portable.counters == local.counters
    assert abs(portable.metrics["test_accuracy"] - local.metrics["test_accuracy"]) <= 0.01
    assert portable.metrics["current_accuracy"] == local.metrics["current_accuracy"]  # the same test split


def test_prism_runner_is_given_the_built_binary_not_a_download(archive):
    settings, _ = archive
    args = prepare(settings, ["--runner=PrismRunner"], say=print)
    location = Path(option(args, "prism_location"))
    assert location == installed_prism().path(settings.tools_dir).expanduser() and os.access(location, os.X_OK)
    assert option(args, "job_server_timeout") == f"{settings.beam_job_server_timeout_secs:g}"


def test_an_unreachable_job_server_fails_naming_the_runner_and_registers_nothing(archive):
    settings, folder = archive
    settings = fresh(settings, folder, "unreachable").model_copy(update={"beam_job_server_timeout_secs": 3})
    endpoint = f"localhost:{free_port()}"
    with pytest.raises(RetrainJobFailed, match=rf"failed on PortableRunner at {endpoint}: .*nothing was registered"):
        retrain(
            settings,
            beam_args=["--runner=PortableRunner", f"--job_endpoint={endpoint}", "--environment_type=LOOPBACK"],
            say=print,
        )
    assert [v.version for v in Registry.from_settings(settings).versions(settings.model_name)] == ["1"]


def test_flink_without_a_local_job_server_jar_is_refused_before_any_download(archive):
    settings, folder = archive
    settings = fresh(settings, folder, "flink")
    with pytest.raises(RetrainJobFailed, match=r"FlinkRunner needs a local job server jar \(--flink_job_server_jar"):
        retrain(settings, beam_args=["--runner=FlinkRunner", "--flink_master=[local]"], say=print)
    assert [v.version for v in Registry.from_settings(settings).versions(settings.model_name)] == ["1"]
