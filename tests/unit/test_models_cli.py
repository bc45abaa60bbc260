"""``streamdl models`` on an empty registry: what serves is said plainly, and show / promote / rollback end
in one line and exit 2, never an MLflow traceback. Real MLflow on a SQLite store in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamdl.models.registry import Registry
from streamdl.settings import load_settings
from streamdl.streams.cli.main import main


@pytest.fixture(scope="module")
def empty_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder shared by the tests that write nothing to the registry (MLflow makes its tables once)."""
    return tmp_path_factory.mktemp("models-cli") / "state"


@pytest.fixture
def state(empty_state: Path, tmp_path: Path, monkeypatch) -> Path:
    for key in list(os.environ):
        if key.startswith("STREAMDL_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env of the project's
    return empty_state


def run(capsys, state: Path, *args: str) -> tuple[int, str, str]:
    code = main(["models", *args, "--state-dir", str(state)])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_on_an_empty_registry_says_the_base_model_serves(capsys, state: Path):
    code, out, _ = run(capsys, state, "list")
    assert code == 0
    assert "digits-cnn has no registered versions" in out
    assert "the workers serve the base model digits-cnn v1" in out and "first 'streamdl retrain'" in out


@pytest.mark.parametrize("args", [("rollback",), ("promote", "2"), ("show", "1")])
def test_show_promote_rollback_on_an_empty_registry_are_one_line_and_exit_2(capsys, state: Path, args):
    code, out, err = run(capsys, state, *args)
    assert code == 2 and not out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamdl: error: "), err
    assert "no registered versions" in lines[0] and "the workers serve the base model digits-cnn v1" in lines[0]
    assert "'streamdl retrain'" in lines[0] and "MlflowException" not in err


def test_an_unknown_model_name_is_the_same_one_line(capsys, state: Path):
    code = main(["models", "rollback", "--state-dir", str(state), "--model", "MobileNetV2"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "MobileNetV2 has no registered versions" in err and "serve the base model MobileNetV2 " in err


def test_with_only_the_base_registered_rollback_and_unknown_versions_say_what_serves(
    capsys, state: Path, tmp_path: Path
):
    state = tmp_path / "own-state"  # this test registers a version
    registry = Registry.from_settings(load_settings({"state_dir": state}, env_file=None))
    registry.ensure_base("digits-cnn", {"holdout_accuracy": 0.98}, source=tmp_path.as_uri())

    code, out, _ = run(capsys, state, "list")
    assert code == 0 and out.splitlines()[1].split()[:3] == ["1", "base", "*"]
    code, _, err = run(capsys, state, "rollback")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "nothing to roll back to (promotions so far: 1; version 1 serves)" in err
    code, _, err = run(capsys, state, "promote", "7")
    assert code == 2 and "has no version '7'" in err and "versions: 1; version 1 serves" in err
