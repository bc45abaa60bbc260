"""streams/jobs/runners.py without a runner: option parsing, what is refused before a run, how a failure reads."""

from __future__ import annotations

import pytest

from streamdl.errors import StreamdlError
from streamdl.settings import load_settings
from streamdl.streams.jobs.runners import RetrainJobFailed, option, prepare, run_job, runner_name

SETTINGS = load_settings(env_file=None)


def test_options_are_read_in_both_spellings_and_the_last_wins():
    args = ["--runner", "PortableRunner", "--job_endpoint=a:1", "--job_endpoint=b:2"]
    assert option(args, "runner") == "PortableRunner" and option(args, "job_endpoint") == "b:2"
    assert option(args, "flink_master") is None
    assert runner_name([]) == "local (in-process)"


def test_the_local_runner_is_left_alone():
    assert prepare(SETTINGS, ["--direct_num_workers=2"], say=print) == ["--direct_num_workers=2"]


def test_a_portable_runner_gets_the_job_server_timeout_setting_unless_given():
    args = prepare(SETTINGS, ["--runner=PortableRunner", "--job_endpoint=localhost:8099"], say=print)
    assert option(args, "job_server_timeout") == "60"
    given = ["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--job_server_timeout=5"]
    assert option(prepare(SETTINGS, given, say=print), "job_server_timeout") == "5"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--runner=PortableRunner"], "PortableRunner needs --job_endpoint=HOST:PORT"),
        (["--runner=FlinkRunner", "--flink_master=[local]"], "FlinkRunner needs a local job server jar"),
        (["--runner=SparkRunner"], "SparkRunner needs a local job server jar (--spark_job_server_jar=PATH)"),
    ],
)
def test_what_would_download_or_cannot_connect_is_refused_before_the_run(args, says):
    with pytest.raises(RetrainJobFailed, match=rf"^{says.replace('(', '[(]').replace(')', '[)]')}"):
        prepare(SETTINGS, args, say=print)


def test_a_runner_given_its_jar_or_endpoint_is_passed_through():
    args = ["--runner=FlinkRunner", "--flink_job_server_jar=/opt/job-server.jar"]
    assert prepare(SETTINGS, args, say=print)[:2] == args


def test_a_failed_job_names_the_runner_the_endpoint_and_the_cause():
    def job(args):
        raise RuntimeError("Pipeline job-001 failed in state FAILED:\nbad things\nworker lost")

    args = ["--runner=PortableRunner", "--job_endpoint=localhost:1234"]
    with pytest.raises(RetrainJobFailed) as caught:
        run_job(args, job)
    assert str(caught.value) == (
        "the Beam job failed on PortableRunner at localhost:1234: RuntimeError: worker lost; nothing was registered"
    )


def test_the_products_own_errors_pass_unchanged():
    class Mine(StreamdlError):
        pass

    def job(args):
        raise Mine("too few labels")

    with pytest.raises(Mine):
        run_job([], job)
    assert run_job([], lambda args: {"files": 1}) == {"files": 1}
