"""The two services of the local stack: a single-node KRaft Kafka broker and a single-node
Elasticsearch, each run from Maven artifacts on the local JVM, on 127.0.0.1.

Lifecycle of a :class:`Service`: :meth:`~Service.prepare` (fetch, write config; idempotent),
:meth:`~Service.start` (spawn, detached), :meth:`~Service.healthy` (one quick probe),
:meth:`~Service.stop`. State lives under ``<state_dir>/<name>/``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamdl.errors import StackError
from streamdl.infra import process
from streamdl.infra.fetch import fetch_elasticsearch, fetch_kafka, find_java, java_home
from streamdl.settings import Settings

UNPRIVILEGED_UID = 65534  # "nobody": Elasticsearch refuses to run as root
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServiceStatus:
    """What ``stack status`` shows for one service."""

    name: str
    version: str
    address: str
    state: str  # "running", "running (external)", "stopped", "stale pid file", "unhealthy"
    pid: int | None
    rss_bytes: int
    log: Path


class Service(ABC):
    """One JVM service of the local stack."""

    name: str

    def __init__(self, settings: Settings, say: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.say = say
        root = self._root(settings.state_dir.resolve())
        self.home = root / self.name
        self.dist_dir = root / "dist"
        self.pid_file = self.home / f"{self.name}.pid"
        self.log = self.home / f"{self.name}.log"
        host, _ = self.address
        if host not in LOOPBACK:
            raise StackError(
                f"the local stack listens on 127.0.0.1, but {self.name} is configured at {host}; "
                f"unset {self.address_setting} to use the local stack, "
                "or point it at your own cluster and skip 'stack up'."
            )

    def _root(self, state_dir: Path) -> Path:
        """The folder that holds this service's ``<name>/`` and ``dist/`` (the state folder)."""
        return state_dir

    # --- what differs per service -------------------------------------------
    @property
    @abstractmethod
    def address(self) -> tuple[str, int]:
        """Host and client port."""

    @property
    @abstractmethod
    def address_setting(self) -> str:
        """The environment variable that sets :attr:`address`."""

    @property
    @abstractmethod
    def version(self) -> str:
        """The release this service runs."""

    @property
    @abstractmethod
    def ports(self) -> list[int]:
        """Every port the service listens on (checked free before start)."""

    def port_setting(self, port: int) -> str:
        """The environment variable that moves ``port`` (one of :attr:`ports`)."""
        return self.address_setting

    @abstractmethod
    def prepare(self) -> None:
        """Fetch the artifacts and write the configuration (idempotent)."""

    @abstractmethod
    def _command(self) -> tuple[list[str], dict[str, str], int | None]:
        """The command, extra environment and (when root) the uid to run as."""

    @abstractmethod
    def healthy(self) -> bool:
        """One quick health probe (no waiting)."""

    # --- shared lifecycle ------------------------------------------------------
    @property
    def marker(self) -> str:
        """A string on the service's command line at every stage of its start (guards against pid reuse)."""
        return f"{self.home}/"

    def pid(self) -> int | None:
        """The recorded pid when that process is alive and is this service, else ``None``."""
        pid = process.read_pid(self.pid_file)
        return pid if process.is_alive(pid, self.marker) else None

    def status(self) -> ServiceStatus:
        recorded = process.read_pid(self.pid_file)
        pid = self.pid()
        if pid is None:
            state = "stale pid file" if recorded else ("running (external)" if self.healthy() else "stopped")
        else:
            state = "running" if self.healthy() else "unhealthy"
        host, port = self.address
        return ServiceStatus(
            self.name, self.version, f"{host}:{port}", state, pid, process.rss_bytes(pid) if pid else 0, self.log
        )

    def start(self) -> int:
        """Spawn the service detached from this process; returns its pid."""
        host, _ = self.address
        taken = [p for p in self.ports if not process.port_is_free(host, p)]
        if taken:
            settings = ", ".join(dict.fromkeys(self.port_setting(p) for p in taken))
            raise StackError(
                f"{self.name} cannot start: port {', '.join(map(str, taken))} on {host} is taken by another process. "
                f"Stop that process, or move {self.name} with {settings}."
            )
        cmd, env, uid = self._command()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=self.home,
                start_new_session=True,
                user=uid,
                group=uid,
                extra_groups=[] if uid is not None else None,
            )
        process.write_pid(self.pid_file, proc.pid)
        return proc.pid

    def stop(self, timeout: float = 60.0) -> str:
        """Stop the service if it runs; returns what happened."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        clean = process.stop_process(pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        return "stopped" if clean else f"killed (did not stop within {timeout:.0f}s)"

    def log_tail(self, lines: int = 30) -> str:
        return process.tail(self.log, lines)


def kafka_cluster_id() -> str:
    """A random KRaft cluster id. Like Kafka's Uuid.randomUuid, never one starting with '-'
    (the storage tool would read it as a flag)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka(Service):
    """A single-node Kafka broker in KRaft mode (broker and controller in one process)."""

    name = "kafka"

    @property
    def address(self) -> tuple[str, int]:
        return self.settings.kafka_address

    @property
    def address_setting(self) -> str:
        return "STREAMDL_KAFKA_BOOTSTRAP_SERVERS"

    @property
    def version(self) -> str:
        return self.settings.kafka_version

    @property
    def controller_port(self) -> int:
        """The KRaft controller listener's port: ``kafka_controller_port``, or the client port + 1."""
        port = self.settings.kafka_controller_port or self.address[1] + 1
        if port == self.address[1]:
            raise StackError(
                f"STREAMDL_KAFKA_CONTROLLER_PORT ({port}) is the broker's own port (STREAMDL_KAFKA_BOOTSTRAP_SERVERS); "
                "give the controller another one, or 0 for the broker's port + 1"
            )
        return port

    @property
    def ports(self) -> list[int]:
        return [self.address[1], self.controller_port]  # client listener, controller listener

    def port_setting(self, port: int) -> str:
        return "STREAMDL_KAFKA_CONTROLLER_PORT" if port == self.controller_port else self.address_setting

    def prepare(self) -> None:
        self.libs = fetch_kafka(self.dist_dir, self.version, self.say)
        self.java, _ = find_java()
        host, port = self.address
        data = self.home / "data"
        config = self.home / "server.properties"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{host}:{self.controller_port}",
                    f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{host}:{port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={data}",
                    f"num.partitions={self.settings.topic_partitions}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "message.max.bytes=16777216",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )
        (self.home / "log4j.properties").write_text(
            "\n".join(
                [
                    "log4j.rootLogger=INFO, stdout",
                    "log4j.appender.stdout=org.apache.log4j.ConsoleAppender",
                    "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout",
                    "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n",
                    "log4j.logger.kafka.controller=WARN",
                    "log4j.logger.state.change.logger=WARN",
                    "log4j.logger.org.apache.kafka.controller=WARN",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            cluster_id = kafka_cluster_id()
            proc = subprocess.run(
                [
                    str(self.java),
                    "-cp",
                    f"{self.libs}/*",
                    f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise StackError(
                    f"formatting Kafka storage in {data} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
                )

    def _command(self) -> tuple[list[str], dict[str, str], int | None]:
        heap = self.settings.kafka_heap
        return (
            [
                str(self.java),
                f"-Xms{heap}",
                f"-Xmx{heap}",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
                "-cp",
                f"{self.libs}/*",
                "kafka.Kafka",
                str(self.home / "server.properties"),
            ],
            {},
            None,
        )

    def healthy(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            meta = AdminClient(
                {
                    "bootstrap.servers": self.settings.kafka_bootstrap_servers,
                    "socket.connection.setup.timeout.ms": 1000,
                    "log_level": 0,
                    "logger": _quiet_logger(),
                }
            ).list_topics(timeout=2)
        except Exception:  # noqa: BLE001 - any failure means "not yet healthy"
            return False
        return bool(meta.brokers)


class Elasticsearch(Service):
    """A single-node Elasticsearch (security off locally; see docs for TLS and auth)."""

    name = "elasticsearch"

    @property
    def address(self) -> tuple[str, int]:
        return self.settings.es_address

    @property
    def address_setting(self) -> str:
        return "STREAMDL_ES_URL"

    @property
    def version(self) -> str:
        return self.settings.es_version

    @property
    def transport_port(self) -> int:
        """The node-to-node transport port: ``es_transport_port``, or the HTTP port + 100."""
        port = self.settings.es_transport_port or self.address[1] + 100
        if port == self.address[1]:
            raise StackError(
                f"STREAMDL_ES_TRANSPORT_PORT ({port}) is the HTTP port (STREAMDL_ES_URL); give the transport "
                "another one, or 0 for the HTTP port + 100"
            )
        return port

    @property
    def ports(self) -> list[int]:
        return [self.address[1], self.transport_port]  # HTTP, transport

    def port_setting(self, port: int) -> str:
        return "STREAMDL_ES_TRANSPORT_PORT" if port == self.transport_port else self.address_setting

    def prepare(self) -> None:
        self.dist = fetch_elasticsearch(self.dist_dir, self.version, self.say)
        self.java, _ = find_java()
        host, port = self.address
        config = self.home / "config"
        config.mkdir(parents=True, exist_ok=True)
        for name in ("jvm.options", "log4j2.properties"):
            shutil.copy2(self.dist / "config" / name, config / name)
        (config / "jvm.options.d").mkdir(exist_ok=True)
        (config / "elasticsearch.yml").write_text(
            "\n".join(
                [
                    "cluster.name: streamdl-local",
                    "node.name: streamdl-local",
                    f"path.data: {self.home / 'data'}",
                    f"path.logs: {self.home / 'logs'}",
                    f"network.host: {host}",
                    f"http.port: {port}",
                    f"transport.port: {self.transport_port}",
                    "discovery.type: single-node",
                    "xpack.security.enabled: false",
                    "cluster.routing.allocation.disk.threshold_enabled: false",
                    "action.destructive_requires_name: false",
                    "",
                ]
            )
        )
        for sub in ("data", "logs", "tmp"):
            (self.home / sub).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            self._give_to_unprivileged_user()

    def _root(self, state_dir: Path) -> Path:
        """The state folder, or, when root runs the stack and ``nobody`` cannot reach it (a checkout
        under a 0700 home folder), ``/var/tmp/streamdl-<hash of the state folder>``."""
        if os.geteuid() != 0 or reachable_by_nobody(state_dir):
            return state_dir
        return Path("/var/tmp") / f"streamdl-{hashlib.sha256(str(state_dir).encode()).hexdigest()[:10]}"

    def _give_to_unprivileged_user(self) -> None:
        """Elasticsearch will not run as root: hand its folders to ``nobody`` (see :meth:`_root`)."""
        if self.home.parent != self.settings.state_dir.resolve():
            self.say(
                f"elasticsearch: user 'nobody' cannot reach {self.settings.state_dir.resolve()}, "
                f"so its files live in {self.home.parent}"
            )
        for path in [self.home, *self.home.rglob("*")]:
            os.chown(path, UNPRIVILEGED_UID, UNPRIVILEGED_UID, follow_symlinks=False)

    def _command(self) -> tuple[list[str], dict[str, str], int | None]:
        heap = self.settings.es_heap
        env = {
            "ES_JAVA_HOME": str(java_home(self.java)),
            "ES_PATH_CONF": str(self.home / "config"),
            "ES_TMPDIR": str(self.home / "tmp"),
            "ES_JAVA_OPTS": f"-Xms{heap} -Xmx{heap}",
            "HOME": str(self.home),
        }
        uid = UNPRIVILEGED_UID if os.geteuid() == 0 else None
        return [str(self.dist / "bin" / "elasticsearch"), "-p", str(self.home / "server.pid")], env, uid

    def healthy(self) -> bool:
        url = f"{self.settings.es_url}/_cluster/health?timeout=1s"
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return json.load(resp).get("status") in ("yellow", "green")
        except (urllib.error.URLError, OSError, ValueError):
            return False


def reachable_by_nobody(path: Path) -> bool:
    """Whether user ``nobody`` can walk down to ``path`` (every existing ancestor searchable by others)."""
    for folder in [path, *path.parents]:
        if folder.exists():
            st = folder.stat()
            if not st.st_mode & 0o001 and st.st_uid != UNPRIVILEGED_UID:
                return False
    return True


def _quiet_logger():
    """A logger that swallows librdkafka's connection-refused chatter during health probes."""
    import logging

    quiet = logging.getLogger("streamdl.kafka-probe")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return quiet
