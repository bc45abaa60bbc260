"""Run ``streamdl worker`` as a child process with given settings (the demo, tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from streamdl.errors import StreamdlError
from streamdl.settings import Settings, settings_env


class WorkerProcess:
    """One worker process: :meth:`start` waits until its metrics endpoint answers (the pipeline is set up)."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> "WorkerProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMDL_")}
        env.update(settings_env(self.settings))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "streams", "worker"], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StreamdlError(f"the worker exited with {self.proc.returncode} while starting; log {self.log}:\n{self.tail()}")
            if self.metrics() is not None:
                return self
            time.sleep(0.5)
        self.stop()
        raise StreamdlError(f"the worker did not start within {timeout:.0f}s; log {self.log}:\n{self.tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> str | None:
        """The worker's Prometheus text, or ``None`` when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.metrics_port}/metrics", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            return None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        from infra.process import tail

        return tail(self.log, lines)
