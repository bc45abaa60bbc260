"""An optional service of the local stack: a portable Beam job server (``streamdl stack up --with prism``).

Beam's Prism runner, built once from the Go module proxy for the installed apache-beam
(:mod:`streamdl.infra.gotools`), listening on 127.0.0.1:``STREAMDL_JOB_SERVER_PORT``. A retraining
run reaches it the way it would reach Flink's or Spark's Beam job server::

    streamdl retrain -- --runner=PortableRunner --job_endpoint=localhost:8099 --environment_type=LOOPBACK

Why Prism and not Flink's job server: Beam's Flink and Spark job server jars are not served by the
Maven registry this project reaches (docs/beam-runners.md); Prism speaks the same job API.
"""

from __future__ import annotations

import socket

from streamdl.infra.gotools import installed_prism
from streamdl.infra.services import Service


class PrismJobServer(Service):
    """Beam's Prism as a portable job server (job API on the job port; its web UI one port above)."""

    name = "prism"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.settings.job_server_port)

    @property
    def address_setting(self) -> str:
        return "STREAMDL_JOB_SERVER_PORT"

    @property
    def version(self) -> str:
        return installed_prism().version.lstrip("v")

    @property
    def ports(self) -> list[int]:
        port = self.address[1]
        return [port, port + 1]

    @property
    def binary(self):
        return installed_prism().path(self.settings.tools_dir)

    def prepare(self) -> None:
        installed_prism().ensure(self.settings.tools_dir, say=self.say)
        self.home.mkdir(parents=True, exist_ok=True)

    def _command(self) -> tuple[list[str], dict[str, str], int | None]:
        port = self.address[1]
        # the home folder on the command line is the marker that tells this process from another prism
        return (
            [str(self.binary), f"--job_port={port}", f"--web_port={port + 1}"],
            {"STREAMDL_SERVICE_HOME": str(self.home)},
            None,
        )

    @property
    def marker(self) -> str:
        return str(self.binary)

    def healthy(self) -> bool:
        try:
            with socket.create_connection(self.address, timeout=1):
                return True
        except OSError:
            return False
