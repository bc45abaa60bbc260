"""``streamdl stack up [--with prism] | down | status | logs``: the local Kafka + Elasticsearch stack, and optionally
a portable Beam job server."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from streamdl.errors import StackError
from streamdl.infra.jobserver import PrismJobServer
from streamdl.infra.services import Elasticsearch, Kafka, Service, ServiceStatus
from streamdl.settings import Settings

OPTIONAL: dict[str, type[Service]] = {"prism": PrismJobServer}
"""Services ``stack up --with NAME`` adds: the portable Beam job server (infra/jobserver.py)."""


class LocalStack:
    """Both services, started together, waited for together, stopped together."""

    def __init__(self, settings: Settings, say: Callable[[str], None] = print, extra: Sequence[str] = ()) -> None:
        """``extra``: optional services to run too (:data:`OPTIONAL`, e.g. ``prism``); one started before is
        always included, so ``down`` and ``status`` see it."""
        self.settings = settings
        self.say = say
        self.services: list[Service] = [Kafka(settings, say), Elasticsearch(settings, say)]
        unknown = sorted(set(extra) - set(OPTIONAL))
        if unknown:
            raise StackError(f"unknown optional service {', '.join(unknown)}; known: {', '.join(OPTIONAL)}")
        for name, kind in OPTIONAL.items():
            svc = kind(settings, say)
            if name in extra or svc.pid_file.exists():
                self.services.append(svc)

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise StackError(f"unknown service {name!r}; the stack has: {', '.join(s.name for s in self.services)}")

    def up(self) -> dict[str, str]:
        """Start what is not running and wait until everything is healthy; idempotent.

        Returns, per service, ``"already running"`` or ``"started in N.Ns"``.
        """
        started: dict[Service, float] = {}
        result: dict[str, str] = {}
        for svc in self.services:
            if svc.pid() is not None:
                result[svc.name] = "already running"
                continue
            if svc.healthy():  # e.g. started from another checkout's state folder: reuse it, do not fight for the port
                result[svc.name] = (
                    "already running (external: not started from this state folder, so 'down' here leaves it)"
                )
                continue
            if svc.pid_file.exists():
                self.say(
                    f"{svc.name}: removing stale pid file {svc.pid_file} "
                    f"(process {svc.pid_file.read_text().strip()} is gone)"
                )
                svc.pid_file.unlink()
            svc.prepare()
            t0 = time.monotonic()
            pid = svc.start()
            self.say(
                f"{svc.name} {svc.version}: starting on {svc.address[0]}:{svc.address[1]} (pid {pid}, log {svc.log})"
            )
            started[svc] = t0
        deadline = time.monotonic() + self.settings.stack_timeout_secs
        for svc in self.services:
            self._wait_healthy(svc, deadline)
            result.setdefault(
                svc.name, f"started in {time.monotonic() - started[svc]:.1f}s" if svc in started else "already running"
            )
        return result

    def _wait_healthy(self, svc: Service, deadline: float) -> None:
        while True:
            if svc.healthy():
                return
            if svc.pid() is None:
                raise StackError(f"{svc.name} exited while starting. Last lines of {svc.log}:\n{svc.log_tail()}")
            if time.monotonic() > deadline:
                tail = svc.log_tail()
                svc.stop(timeout=20)
                raise StackError(
                    f"{svc.name} did not become healthy within {self.settings.stack_timeout_secs:.0f}s "
                    f"(STREAMDL_STACK_TIMEOUT_SECS); it was stopped. Last lines of {svc.log}:\n{tail}"
                )
            time.sleep(0.5)

    def down(self) -> dict[str, str]:
        """Stop both services (Kafka last is not needed: they are independent) and wait."""
        return {svc.name: svc.stop() for svc in self.services}

    def status(self) -> list[ServiceStatus]:
        return [svc.status() for svc in self.services]


def format_status(rows: list[ServiceStatus]) -> str:
    """A small table of :class:`ServiceStatus` rows."""
    lines = [f"{'service':<14}{'version':<10}{'address':<18}{'state':<16}{'pid':>8}{'memory':>10}  log"]
    for r in rows:
        mem = f"{r.rss_bytes / 2**20:.0f} MiB" if r.rss_bytes else "-"
        lines.append(f"{r.name:<14}{r.version:<10}{r.address:<18}{r.state:<16}{r.pid or '-':>8}{mem:>10}  {r.log}")
    return "\n".join(lines)
