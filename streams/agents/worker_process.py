"""Run ``streamdl worker`` (or another subcommand) as a child process with given settings (the demo, tests,
benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self

from streamdl.errors import StreamdlError
from streamdl.prometheus import metrics_port
from streamdl.settings import Settings, settings_env


class WorkerProcess:
    """One ``streamdl`` child process: :meth:`start` waits until ``ready_url`` answers (for a worker: its
    metrics endpoint, which comes up once the pipeline is set up)."""

    def __init__(
        self, settings: Settings, log: Path, command: tuple[str, ...] = ("worker",), ready_url: str | None = None
    ) -> None:
        self.settings = settings
        self.log = log
        self.command = command
        self.metrics_url = f"http://127.0.0.1:{metrics_port(settings, command[0])}/metrics"
        self.ready_url = ready_url or self.metrics_url
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        """The child's command line (the settings go through the environment, never here)."""
        return [sys.executable, "-m", "streamdl", *self.command]

    @property
    def what(self) -> str:
        """The child as its errors name it."""
        return f"'streamdl {self.command[0]}'"

    def start(self, timeout: float = 180.0) -> Self:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMDL_")}
        env.update(settings_env(self.settings))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StreamdlError(
                    f"{self.what} exited with {self.proc.returncode} while starting; log {self.log}:\n{self.tail()}"
                )
            if self._get(self.ready_url) is not None:
                return self
            time.sleep(0.5)
        self.stop()
        raise StreamdlError(f"{self.what} did not start within {timeout:.0f}s; log {self.log}:\n{self.tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> str | None:
        """The process's Prometheus text (the worker's, or the archiver's on ``archive_metrics_port``), or
        ``None`` when it does not answer."""
        return self._get(self.metrics_url)

    def metric(self, sample: str, label: str, **where: str) -> dict[str, float]:
        """The values of one sample of the worker's metrics by one label, summed over the other
        labels (those in ``where`` must match), e.g.
        ``metric("streamdl_dead_letters_total", "reason", stream="images") -> {"empty": 1.0}``."""
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, float] = {}
        for family in text_string_to_metric_families(self.metrics() or ""):
            for s in family.samples:
                if s.name == sample and label in s.labels and all(s.labels.get(k) == v for k, v in where.items()):
                    out[s.labels[label]] = out.get(s.labels[label], 0.0) + s.value
        return out

    @staticmethod
    def _get(url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
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
        from streamdl.infra.process import tail

        return tail(self.log, lines)
