"""The fault suite's own stack: a Kafka broker and an Elasticsearch node on free ports, with a state
folder of their own, started once for the suite and stopped at its end. The tests stop and start
these services, so they never touch the shared stack on 9092/9200 that the other tests use.

Each test gets a :class:`FaultRun`: its own topics, indices and consumer group on that stack, and
the workers it starts (killed, restarted, joined), all cleaned up afterwards. The rows the tests
report are collected into ``tests/faults/results.md`` and printed at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from streamdl.infra.process import free_port, port_is_free
from streamdl.settings import Settings, load_settings

if TYPE_CHECKING:
    from streamdl.streams.agents.worker_process import WorkerProcess
    from tests.faults.harness import Monitor, PacedProducer, StreamPlan

HERE = Path(__file__).resolve().parent
if str(HERE.parent.parent) not in sys.path:  # ``tests.faults.harness`` imports from the checkout
    sys.path.insert(0, str(HERE.parent.parent))
RESULTS = HERE / "results.md"
COMMAND = ".venv/bin/python -m pytest tests/faults -m faults -s"
_rows: list[dict[str, str]] = []
_selected: list[str] = []


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: the fault suite: kills workers and stops the services of its own stack "
        "(slow; deselect with -m 'not faults')",
    )


def _port_with(offset: int) -> int:
    """A free port ``p`` with ``p + offset`` free as well (Kafka's controller, Elasticsearch's transport)."""
    for _ in range(50):
        port = free_port()
        if port + offset < 65536 and port_is_free("127.0.0.1", port + offset):
            return port
    raise RuntimeError(f"no free port pair (offset {offset}) found")


@dataclass
class FaultStack:
    settings: Settings
    stack: object  # streamdl.infra.stack.LocalStack

    def stop(self, name: str) -> float:
        """Stop one service; returns the seconds it took."""
        t = time.monotonic()
        self.stack.service(name).stop(timeout=60)
        return time.monotonic() - t

    def start(self) -> float:
        """Start what is stopped and wait until healthy; returns the seconds it took."""
        t = time.monotonic()
        self.stack.up()
        return time.monotonic() - t


@pytest.fixture(scope="session")
def fault_stack(settings: Settings) -> Iterator[FaultStack]:
    """Kafka + Elasticsearch for the fault suite alone (free ports, own state folder in a temp folder).

    The unpacked distributions are the project's (``<state>/dist``, fetched from ~/.m2 once) and the
    digits model is the project's cached one (trained there once if missing), both linked in.
    """
    from streamdl.infra.services import reachable_by_nobody
    from streamdl.infra.stack import LocalStack
    from streamdl.models.digits import ensure_digits_model

    project = settings.state_dir.resolve()
    model = ensure_digits_model(project)
    state = Path(tempfile.mkdtemp(prefix="streamdl-faults-"))
    state.chmod(0o755)  # Elasticsearch runs as 'nobody' when root starts it: it must reach its folder
    if os.geteuid() != 0 or reachable_by_nobody(project / "dist"):  # else unpack a copy 'nobody' can run
        (project / "dist").mkdir(parents=True, exist_ok=True)
        (state / "dist").symlink_to(project / "dist")
    (state / "models").mkdir()
    (state / "models" / model.parent.name).symlink_to(model.parent)
    own = load_settings(
        {
            "state_dir": state,
            "kafka_bootstrap_servers": f"127.0.0.1:{_port_with(1)}",
            "es_url": f"http://127.0.0.1:{_port_with(100)}",
            "es_heap": "512m",
            "kafka_heap": "384m",
        },
        env_file=None,
    )
    stack = LocalStack(own, say=lambda m: print(f"[fault stack] {m}"))
    es_home = stack.service("elasticsearch").home
    try:
        stack.up()
        yield FaultStack(own, stack)
    finally:
        stack.down()
        if es_home.parent != state:  # relocated where 'nobody' can reach it
            shutil.rmtree(es_home.parent, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class FaultRun:
    """One test's stream on the fault stack: its own topics, indices and consumer group, and its workers."""

    stack: FaultStack
    folder: Path
    settings: Settings
    workers: list = field(default_factory=list)

    def worker(self, name: str = "worker", **overrides) -> WorkerProcess:
        """Start a worker (same group, its own metrics port); waits until it serves."""
        from streamdl.streams.agents.worker_process import WorkerProcess

        own = self.settings.model_copy(update={"metrics_port": free_port(), **overrides})
        worker = WorkerProcess(own, self.folder / f"{name}.log").start()
        self.workers.append(worker)
        return worker

    @contextmanager
    def streaming(
        self, tag: str, count: int, rate: float, plan: StreamPlan | None = None
    ) -> Iterator[tuple[StreamPlan, Monitor, PacedProducer]]:
        """``count`` digit images (ids tagged ``tag``), or the messages of ``plan``, produced at ``rate`` per
        second to the plan's input topic while a :class:`Monitor` watches; the monitor stops when the block ends."""
        from tests.faults.harness import Monitor, PacedProducer, digit_stream

        plan = plan or digit_stream(tag, count)
        monitor = Monitor(self.settings, stream=plan.stream)
        monitor.start()
        producer = PacedProducer(self.settings, self.settings.topic(plan.stream), plan.messages, rate)
        producer.start()
        try:
            yield plan, monitor, producer
        finally:
            monitor.stop()

    def restart(self, worker) -> None:
        """Start a stopped or killed worker again with the same settings and log."""
        worker.start()

    def alive(self, *workers) -> None:
        for w in workers or self.workers[:1]:
            assert w.alive, f"a worker died (exit {w.proc.returncode}):\n{w.tail(60)}"


@pytest.fixture
def fault_run(fault_stack: FaultStack, tmp_path: Path, request) -> Iterator[FaultRun]:
    from confluent_kafka.admin import AdminClient

    from streamdl.connectors.es_client import es_client
    from streamdl.connectors.setup import init_all

    tag = f"f{uuid.uuid4().hex[:8]}"
    own = fault_stack.settings.model_copy(
        update={
            "topic_prefix": f"{tag}.",
            "index_prefix": f"{tag}-",
            "consumer_group": f"{tag}-workers",
            "worker_agents": "images",
            "similarity_alerts": False,
            "max_batch_size": 64,
            "max_batch_duration_secs": 0.2,
        }
    )
    fault_stack.start()  # a test that failed half-way may have left a service stopped
    init_all(own)
    run = FaultRun(fault_stack, tmp_path, own)
    try:
        yield run
    finally:
        for worker in run.workers:
            worker.stop(timeout=30)
        if getattr(getattr(request.node, "rep_call", None), "failed", False):
            for worker in run.workers:
                print(f"\n--- {worker.log} ---\n{worker.tail(80)}")
        try:
            fault_stack.start()
            es_client(own).options(ignore_status=404).indices.delete(index=f"{tag}-*")
            admin = AdminClient({"bootstrap.servers": own.kafka_bootstrap_servers})
            topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tag)]
            if topics:
                admin.delete_topics(topics, operation_timeout=30)
        except Exception as exc:  # noqa: BLE001 - cleanup of a throwaway stack
            print(f"cleanup of {tag} failed: {exc}")


@pytest.hookimpl(trylast=True)  # after -k / -m deselected
def pytest_collection_modifyitems(config, items) -> None:
    _selected[:] = [item.nodeid for item in items if Path(str(item.path)).resolve().parent == HERE]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session")
def fault_results() -> Iterator[list[dict[str, str]]]:
    """Rows of the results table; written to ``tests/faults/results.md`` at the end of the session."""
    yield _rows
    if _rows and len(_rows) == len(_selected):  # a partial run (-k, a failure) leaves the file as it was
        RESULTS.write_text(_results_text(), encoding="utf-8")


def _results_text() -> str:
    from tests.faults.harness import table

    return f"<!-- {COMMAND}, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs -->\n{table(_rows)}\n"


def pytest_terminal_summary(terminalreporter) -> None:
    if _rows:
        terminalreporter.section("fault suite")
        terminalreporter.write_line(_results_text())
        terminalreporter.write_line(
            f"(written to {RESULTS})"
            if len(_rows) == len(_selected)
            else f"({len(_rows)} of {len(_selected)} fault tests reported: {RESULTS} not updated)"
        )
