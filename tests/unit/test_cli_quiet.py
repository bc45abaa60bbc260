"""The command line stays quick and quiet: commands that need no model never import TensorFlow, and when
one does, TensorFlow's native start-up lines (oneDNN, CUDA probing, absl) do not reach the terminal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamdl.infra.process import free_port


def python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMDL_", "TF_CPP"))}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["similar", "--help"],
        ["dlq", "--help"],
        ["similar", "--id", "x", "--es-url", "http://127.0.0.1:{port}"],
        ["rules", "check"],
    ],
)
def test_commands_without_a_model_do_not_import_tensorflow(argv):
    argv = [a.replace("{port}", str(free_port())) for a in argv]
    run = python(
        "import sys\n"
        "from streamdl.streams.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('LOADED', sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules))\n"
    )
    assert "LOADED []" in run.stdout, run.stdout[-500:] + run.stderr[-2000:]


def test_tensorflow_loads_without_native_noise_below_debug():
    run = python(
        "from streamdl.streams.cli.console import configure_logging\n"
        "configure_logging('INFO')\n"
        "import tensorflow as tf\n"
        "print(int(tf.reduce_sum(tf.ones((2, 2)))))\n"
    )
    assert run.returncode == 0 and run.stdout.strip() == "4", run.stderr[-2000:]
    assert run.stderr == ""


def test_a_failing_quiet_import_shows_what_was_held(tmp_path):
    """The held stderr is replayed when the import fails, so a broken install still says why."""
    (tmp_path / "noisy.py").write_text("import os\nos.write(2, b'native says why\\n')\nraise ImportError('broken')\n")
    run = python(
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from streamdl.streams.cli.console import QuietImport\n"
        "sys.meta_path.insert(0, QuietImport('noisy'))\n"
        "import noisy\n"
    )
    assert run.returncode == 1 and "native says why" in run.stderr and "ImportError: broken" in run.stderr
