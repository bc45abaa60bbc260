"""The command line: help reads well, bad model settings fail before any service is contacted."""

from __future__ import annotations

import pytest

from streamdl.streams.cli.main import build_parser, main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in (
        "stack",
        "init",
        "worker",
        "produce",
        "train",
        "alerts",
        "webhook",
        "archive",
        "retrain",
        "models",
        "similar",
        "serve",
        "index",
        "settings",
        "demo",
    ):
        assert command in out


@pytest.mark.parametrize(
    "argv",
    [
        ["stack", "up", "--help"],
        ["produce", "images", "--help"],
        ["worker", "--help"],
        ["produce", "events", "--help"],
        ["train", "events", "--help"],
        ["retrain", "--help"],
        ["models", "list", "--help"],
        ["alerts", "--help"],
    ],
)
def test_subcommand_help_names_the_settings_variables(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "STREAMDL_KAFKA_BOOTSTRAP_SERVERS" in capsys.readouterr().out


def test_worker_with_missing_weights_says_which_file_to_put_where(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    # An unreachable broker: the model check must fail first, with the exact file and folder.
    code = main(
        ["worker", "--model", "MobileNetV2", "--bootstrap-servers", "127.0.0.1:1", "--state-dir", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5" in err
    assert str(tmp_path / "keras" / "models") in err and "STREAMDL_MODEL_WEIGHTS" in err


def test_worker_with_an_unknown_model_lists_the_known_ones(tmp_path, capsys):
    assert (
        main(["worker", "--model", "NoSuchNet", "--bootstrap-servers", "127.0.0.1:1", "--state-dir", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert "NoSuchNet" in err and "MobileNetV2" in err and "digits-cnn" in err


def test_produce_needs_paths_or_a_sample(capsys):
    assert main(["produce", "images"]) == 2
    assert "PATHS or --sample" in capsys.readouterr().err


def test_worker_with_a_bad_rules_file_names_the_line(tmp_path, monkeypatch, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: hot\n    severity: loud\n    anomaly_score_at_least: 3\n")
    monkeypatch.setenv("STREAMDL_ALERT_RULES_FILE", str(rules))
    code = main(["worker", "--bootstrap-servers", "127.0.0.1:1", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"{rules} line 3:" in err and "severity" in err


def test_worker_with_an_unknown_event_model_lists_the_trained_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREAMDL_WORKER_AGENTS", "events")
    monkeypatch.setenv("STREAMDL_EVENT_MODEL", "no-such-events-model")
    assert main(["worker", "--bootstrap-servers", "127.0.0.1:1", "--state-dir", str(tmp_path)]) == 2
    assert "no-such-events-model" in capsys.readouterr().err


def test_produce_events_needs_a_file_or_a_sample(capsys):
    assert main(["produce", "events"]) == 2
    assert "FILE or --sample sensors" in capsys.readouterr().err


def test_python_m_streamdl_runs_the_command_only_as_the_main_module(monkeypatch, capsys):
    """A child that ``multiprocessing`` spawns imports the parent's main module as ``__mp_main__``: it must
    not run the command (a spawned child of ``streamdl worker`` would start a second worker)."""
    import runpy

    monkeypatch.setattr("sys.argv", ["streamdl", "--help"])
    runpy.run_module("streamdl", run_name="__mp_main__")  # imported, not run: no SystemExit
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("streamdl", run_name="__main__")
    assert exit_.value.code == 0
    assert "worker" in capsys.readouterr().out
