"""Errors a user can act on: a service that is down, a mistyped flag, a bad rules file. Each is one line on
stderr naming where the service was looked for and the setting (or the flag the user typed), within the
time ``connect_timeout_secs`` allows; the command runs as a user runs it (a process), so nothing a library
writes to the terminal escapes the check. No broker is needed: the services are down on purpose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamdl.infra.process import free_port
from streamdl.streams.cli.console import format_table, in_user_terms
from streamdl.streams.cli.main import main

TIMEOUT = 2  # STREAMDL_CONNECT_TIMEOUT_SECS of these runs
LIMIT = 60  # a run still going after this did not honour the setting (before: 120 s and ~780 lines)


def streamdl(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMDL_", "TF_CPP"))}
    environ.update(STREAMDL_CONNECT_TIMEOUT_SECS=str(TIMEOUT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "streamdl", *argv], env=environ, capture_output=True, text=True, timeout=LIMIT
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_produce_with_kafka_down_is_one_line_naming_the_flag(tmp_path):
    port = free_port()
    run = streamdl(
        "produce", "images", "--sample", "digits", "--limit", "3", "--bootstrap-servers", f"127.0.0.1:{port}"
    )
    assert run.returncode == 3, run.stderr
    assert lines(run.stderr) == [
        f"streamdl: error: Kafka at 127.0.0.1:{port} did not answer within {TIMEOUT}s; is it running? Start it with "
        "'streamdl stack up', or set --bootstrap-servers (and check that STREAMDL_KAFKA_SECURITY_PROTOCOL "
        "(PLAINTEXT) is the broker listener's)."
    ]


def test_produce_with_kafka_down_names_the_variable_when_it_was_set_so():
    port = free_port()
    run = streamdl(
        "produce", "events", "--sample", "sensors", env={"STREAMDL_KAFKA_BOOTSTRAP_SERVERS": f"[::1]:{port}"}
    )
    assert run.returncode == 3
    assert len(lines(run.stderr)) == 1 and "set STREAMDL_KAFKA_BOOTSTRAP_SERVERS" in run.stderr


def test_librdkafka_details_come_with_log_level_debug_only():
    port = free_port()
    run = streamdl(
        "produce",
        "images",
        "--sample",
        "digits",
        "--limit",
        "1",
        "--bootstrap-servers",
        f"127.0.0.1:{port}",
        "--log-level",
        "DEBUG",
    )
    assert run.returncode == 3
    assert "Connection refused" in run.stderr and "librdkafka" in run.stderr  # through Python logging, not raw


@pytest.mark.parametrize("argv", [["index", "status"], ["similar", "--id", "abc"]])
def test_elasticsearch_down_is_one_line_and_exit_3(argv):
    port = free_port()
    run = streamdl(*argv, "--es-url", f"http://127.0.0.1:{port}")
    assert run.returncode == 3, run.stderr
    assert lines(run.stderr) == [
        f"streamdl: error: Elasticsearch at http://127.0.0.1:{port} did not answer (Connection refused); is it "
        "running? Start it with 'streamdl stack up', or set --es-url."
    ]


def test_elasticsearch_down_names_the_variable_when_the_environment_set_it():
    port = free_port()
    run = streamdl("index", "status", env={"STREAMDL_ES_URL": f"http://127.0.0.1:{port}"})
    assert run.returncode == 3 and len(lines(run.stderr)) == 1 and "set STREAMDL_ES_URL." in run.stderr


def test_a_bad_url_flag_is_named_as_typed_and_its_value_shown_once(capsys):
    assert main(["index", "status", "--es-url", "localhost:19200"]) == 2
    err = capsys.readouterr().err
    assert "--es-url: expected an http(s)://host[:port] URL, got 'localhost:19200'" in err
    assert "STREAMDL_ES_URL" not in err and err.count("localhost:19200") == 1


def test_a_bad_variable_is_named_as_set(monkeypatch, capsys):
    monkeypatch.setenv("STREAMDL_ES_URL", "localhost:19200")
    assert main(["index", "status"]) == 2
    assert "setting es_url (STREAMDL_ES_URL): expected" in capsys.readouterr().err


def test_worker_with_kafka_down_says_so_alone(tmp_path):
    """A worker loads its model (TensorFlow) before it contacts Kafka: neither TensorFlow's start-up lines
    nor the client's retries reach the terminal, only the product's own log lines and the error."""
    port = free_port()
    run = streamdl(
        "worker",
        "--bootstrap-servers",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(tmp_path),
        "--metrics-port",
        "0",
        env={"STREAMDL_WORKER_AGENTS": "images"},
    )
    assert run.returncode == 3, run.stderr
    out = lines(run.stderr)
    assert out[-1].startswith(f"streamdl: error: Kafka at 127.0.0.1:{port} did not answer within {TIMEOUT}s")
    foreign = [line for line in out[:-1] if " streamdl." not in line]
    assert not foreign, foreign


def test_rules_check_lists_every_bad_rule_at_once(tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {name: a, severity: loud, class_in: ['7']}\n"
        "  - {name: b, severity: warning}\n"
        "  - {name: ok, severity: info, finding: novel}\n"
        "  - {name: c, severity: info, finding: novel, colour: red}\n"
        "  - {name: ok, severity: info, finding: novel}\n"
    )
    assert main(["rules", "check", str(rules)]) == 2
    err = capsys.readouterr().err
    assert "4 rules are not valid" in err
    for line, what in (
        (2, "'severity' must be one of"),
        (3, "needs exactly one condition"),
        (5, "unknown key 'colour'"),
        (6, "rule name 'ok' is used twice"),
    ):
        assert f"{rules} line {line}: " in err and what in err


def test_rules_check_prints_the_rules_of_a_valid_file(capsys):
    assert main(["rules", "check"]) == 0
    out = capsys.readouterr().out
    assert "default_alert_rules.yaml: 4 rules, valid" in out and "near_duplicate" in out


def test_in_user_terms_replaces_whole_variable_names_only():
    text = "set STREAMDL_ES_URL or STREAMDL_ES_URL_FILE"
    assert in_user_terms(text, {"es_url": "--es-url"}) == "set --es-url or STREAMDL_ES_URL_FILE"


def test_format_table_keeps_columns_apart():
    table = format_table(
        ["rank", "label", "source"], [["1", "a-very-long-label", "x.png"], ["10", "b", "y"]], right=(0,)
    )
    rows = table.splitlines()
    assert rows[1] == "   1  a-very-long-label  x.png" and rows[2] == "  10  b                  y"


def test_help_of_the_root_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "3 a service did not answer" in out and "2 bad input or settings" in out


@pytest.mark.parametrize(
    ("argv", "listed", "not_listed"),
    [
        (["rules", "check"], ["--log-level", "--env-file"], ["--bootstrap-servers", "--es-url", "--batch-size"]),
        (["dlq"], ["--bootstrap-servers", "--topic-prefix"], ["--es-url", "--model", "--metrics-port"]),
        (["similar"], ["--es-url", "--index-prefix", "--model"], ["--bootstrap-servers", "--batch-size"]),
        (["produce", "images"], ["--bootstrap-servers", "--topic-prefix"], ["--es-url", "--model", "--batch-linger"]),
        (["stack", "up"], ["--bootstrap-servers", "--es-url", "--state-dir"], ["--topic-prefix", "--batch-size"]),
        (["worker"], ["--bootstrap-servers", "--es-url", "--batch-size", "--model", "--metrics-port"], []),
    ],
)
def test_help_lists_the_settings_the_command_reads(argv, listed, not_listed, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    out = capsys.readouterr().out
    assert all(f" {flag} " in out for flag in listed), out
    assert not [flag for flag in not_listed if f" {flag} " in out], out
