"""`streamdl stack up --with prism`: the optional job server joins the stack (no service is started here)."""

from __future__ import annotations

import pytest

from streamdl.errors import StackError
from streamdl.infra.jobserver import PrismJobServer
from streamdl.infra.stack import LocalStack
from streamdl.settings import load_settings
from streamdl.streams.cli.main import build_parser


def names(stack: LocalStack) -> list[str]:
    return [s.name for s in stack.services]


def test_the_job_server_is_in_the_stack_only_when_asked_or_left_running(tmp_path):
    settings = load_settings({"state_dir": tmp_path}, env_file=None)
    assert names(LocalStack(settings)) == ["kafka", "elasticsearch"]
    assert names(LocalStack(settings, extra=("prism",))) == ["kafka", "elasticsearch", "prism"]
    prism = PrismJobServer(settings)
    prism.pid_file.parent.mkdir(parents=True)
    prism.pid_file.write_text("999999")  # started earlier: 'down' and 'status' must see it
    assert names(LocalStack(settings)) == ["kafka", "elasticsearch", "prism"]
    assert prism.address == ("127.0.0.1", settings.job_server_port) and prism.pid() is None


def test_an_unknown_optional_service_is_refused_naming_the_known_ones(tmp_path):
    settings = load_settings({"state_dir": tmp_path}, env_file=None)
    with pytest.raises(StackError, match="unknown optional service flink; known: prism"):
        LocalStack(settings, extra=("flink",))


def test_the_cli_flag():
    assert build_parser().parse_args(["stack", "up", "--with", "prism"]).with_services == ["prism"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stack", "up", "--with", "flink"])
