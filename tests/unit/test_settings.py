"""Settings: precedence (default < .env < environment < flags), validation messages, derived names."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamdl.errors import SettingsError
from streamdl.settings import load_settings
from streamdl.streams.cli.main import build_parser, settings_from_args


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("STREAMDL_"):
            monkeypatch.delenv(key)


def test_defaults_point_at_the_local_stack():
    s = load_settings(env_file=None)
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.es_url == "http://127.0.0.1:9200"
    assert [s.topic(n) for n in ("images", "events", "predictions", "alerts", "dlq", "model-updates")] == [
        "streamdl.images",
        "streamdl.events",
        "streamdl.predictions",
        "streamdl.alerts",
        "streamdl.dlq",
        "streamdl.model-updates",
    ]
    assert [s.alias(n) for n in ("images", "events", "alerts")] == [
        "streamdl-images",
        "streamdl-events",
        "streamdl-alerts",
    ]


def test_env_file_then_environment_then_flags(tmp_path: Path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("STREAMDL_MAX_BATCH_SIZE=11\nSTREAMDL_TOPIC_PREFIX=fromfile.\nSTREAMDL_MODEL_NAME=file-model\n")
    s = load_settings(env_file=env_file)
    assert (s.max_batch_size, s.topic_prefix, s.model_name) == (11, "fromfile.", "file-model")

    monkeypatch.setenv("STREAMDL_MAX_BATCH_SIZE", "22")
    monkeypatch.setenv("STREAMDL_TOPIC_PREFIX", "fromenv.")
    s = load_settings(env_file=env_file)
    assert (s.max_batch_size, s.topic_prefix, s.model_name) == (22, "fromenv.", "file-model")

    args = build_parser().parse_args(["settings", "--env-file", str(env_file), "--batch-size", "33"])
    s = settings_from_args(args)
    assert (s.max_batch_size, s.topic_prefix, s.model_name) == (33, "fromenv.", "file-model")
    assert s.topic("images") == "fromenv.images"


def test_flag_given_after_subcommand_is_applied(monkeypatch):
    monkeypatch.setenv("STREAMDL_ES_URL", "http://10.0.0.1:9200")
    args = build_parser().parse_args(["stack", "status", "--es-url", "http://127.0.0.1:9333", "--state-dir", "/tmp/x"])
    s = settings_from_args(args)
    assert s.es_url == "http://127.0.0.1:9333" and s.es_address == ("127.0.0.1", 9333)
    assert s.state_dir == Path("/tmp/x")


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("max_batch_size", "lots", "STREAMDL_MAX_BATCH_SIZE"),
        ("max_batch_size", "0", "STREAMDL_MAX_BATCH_SIZE"),
        ("es_url", "not a url", "STREAMDL_ES_URL"),
        ("es_url", "ftp://127.0.0.1:9200", "STREAMDL_ES_URL"),
        ("kafka_bootstrap_servers", "localhost", "STREAMDL_KAFKA_BOOTSTRAP_SERVERS"),
        ("max_batch_duration_secs", "soon", "STREAMDL_MAX_BATCH_DURATION_SECS"),
        ("es_heap", "lots", "STREAMDL_ES_HEAP"),
        ("log_level", "LOUD", "STREAMDL_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_setting(field, value, needle, monkeypatch):
    monkeypatch.setenv(f"STREAMDL_{field.upper()}", value)
    with pytest.raises(SettingsError) as err:
        load_settings(env_file=None)
    assert needle in str(err.value) and field in str(err.value)


def test_bad_flag_value_names_the_setting():
    from streamdl.streams.cli.main import main

    assert main(["settings", "--batch-size", "many"]) == 2


def test_secrets_are_masked(monkeypatch, capsys):
    from streamdl.streams.cli.main import main

    monkeypatch.setenv("STREAMDL_ES_USERNAME", "elastic")
    monkeypatch.setenv("STREAMDL_ES_PASSWORD", "hunter2")
    s = load_settings(env_file=None)
    assert s.es_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and s.masked()["es_password"] == "**********"
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "es_password" in out


def test_unknown_topic_or_alias_is_refused():
    s = load_settings(env_file=None)
    with pytest.raises(ValueError, match="unknown topic"):
        s.topic("imagez")
    with pytest.raises(ValueError, match="unknown alias"):
        s.alias("dlq")


def test_each_stream_has_its_own_default_linger_and_max_batch_duration_sets_both():
    defaults = load_settings({}, env_file=None)
    assert defaults.max_batch_duration_secs is None
    assert (defaults.linger("events"), defaults.linger("images")) == (0.05, 0.5)
    tuned = load_settings({"events_batch_linger_secs": 0.02, "images_batch_linger_secs": 1.0}, env_file=None)
    assert (tuned.linger("events"), tuned.linger("images")) == (0.02, 1.0)
    both = load_settings({"max_batch_duration_secs": 0.2, "events_batch_linger_secs": 0.02}, env_file=None)
    assert (both.linger("events"), both.linger("images")) == (0.2, 0.2)
