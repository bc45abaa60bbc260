"""CPU accounting for the benchmarks: what each process used during a run, and what the machine's cores allow.

:class:`CpuMeter` takes the CPU seconds of the worker, Elasticsearch, Kafka, the benchmark's own process and the
rest of the machine between two snapshots (``/proc``). :class:`Budget` turns CPU per item (event or image) of
one run into the rates the cores allow: with the worker as measured, and with a worker that costs no more than
the bare model (plus, for events, Faust's own intake). When a target rate is above the second, no change to the
worker can reach it on this machine while Elasticsearch and Kafka do the work they did in the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from streamdl.infra.process import children

PROCESSES = ("worker", "elasticsearch", "kafka", "bench", "others")
"""The columns of a CPU table: the worker, the two services, this process (the producer) and the rest."""
SERVICES = ("elasticsearch", "kafka", "bench")
"""What a pipeline needs besides its worker: Elasticsearch, Kafka and the producer (this process)."""


def cpu_of(pid: int | None) -> float:
    """CPU seconds (user + system) of ``pid`` and its children so far."""
    total = 0.0
    for p in [pid, *children(pid)] if pid else []:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine was busy so far (all cores; /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


class CpuMeter:
    """CPU seconds used by the worker, Elasticsearch, Kafka, this process and everything else between two snapshots."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids

    def snapshot(self) -> dict[str, float]:
        out = {name: cpu_of(pid) for name, pid in self.pids.items()}
        out["bench"] = sum(os.times()[:2])
        out["machine"] = machine_busy()
        return out

    @staticmethod
    def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        out = {k: b[k] - a[k] for k in a}
        out["others"] = out.pop("machine") - sum(out.values())
        return out

    def start(self, worker_pid: int) -> dict[str, float]:
        """A snapshot to measure a run of the worker ``worker_pid`` from (:meth:`used_since`)."""
        self.pids["worker"] = worker_pid
        return self.snapshot()

    def used_since(self, before: dict[str, float]) -> dict[str, float]:
        """CPU seconds per process since ``before`` (:meth:`start`), the rest of the machine as ``others``."""
        return self.diff(before, self.snapshot())


@dataclass
class Budget:
    """What ``cores`` allow a pipeline, from the CPU one item (event or image) cost in one run, in µs."""

    cores: int
    model_us: float
    """The bare model alone (all its threads), measured apart."""
    floor_us: float
    """What else every worker pays per item whatever it does (events: Faust's intake alone); 0 where not measured."""
    services_us: float
    """Elasticsearch, Kafka and the producer during the pipeline run."""
    worker_us: float
    """The worker during the pipeline run."""

    @property
    def as_measured(self) -> float:
        """Items per second at which the worker and the services, as measured, would fill every core."""
        return 1e6 * self.cores / (self.worker_us + self.services_us)

    @property
    def leanest_worker(self) -> float:
        """Items per second the cores allow a worker that costs only the bare model and the floor, with the services
        as measured: an upper bound for any worker on this machine."""
        return 1e6 * self.cores / (self.model_us + self.floor_us + self.services_us)

    def worker_us_at(self, rate: float) -> float:
        """CPU per item left to the worker at ``rate`` items per second once the services had theirs (< 0: none)."""
        return 1e6 * self.cores / rate - self.services_us

    @classmethod
    def of(cls, used: dict[str, float], items: int, model_us: float, floor_us: float = 0.0) -> Budget:
        """From a :meth:`CpuMeter.diff` of a run of ``items``."""
        return cls(
            cores=os.cpu_count() or 1,
            model_us=model_us,
            floor_us=floor_us,
            services_us=1e6 * sum(used[p] for p in SERVICES) / items,
            worker_us=1e6 * used["worker"] / items,
        )


def cpu_table(unit: str, rows: list[tuple[str, dict[str, float], int, float]]) -> list[str]:
    """Markdown lines: CPU per ``unit`` of each process, for rows of (name, :meth:`CpuMeter.diff`, items, seconds)."""
    lines = [
        f"| run | {' | '.join(PROCESSES)} | total | cores busy |",
        "| --- | " + " | ".join("---:" for _ in PROCESSES) + " | ---: | ---: |",
    ]
    for name, used, items, seconds in rows:
        total = sum(used.values())
        scale = 1e6 if unit == "µs" else 1e3
        lines.append(
            f"| {name} | "
            + " | ".join(f"{scale * used[p] / items:.{0 if unit == 'µs' else 2}f}" for p in PROCESSES)
            + f" | {scale * total / items:.{0 if unit == 'µs' else 2}f} | {total / seconds:.2f} of {os.cpu_count()} |"
        )
    return lines


def budget_table(
    budget: Budget, item: str, measured: float, target: tuple[str, float], floor: str = "", one_core: bool = False
) -> list[str]:
    """Markdown lines: what the cores allow, against the pipeline's ``measured`` rate and a ``target`` (what it
    is, in items per second); ``floor`` names :attr:`Budget.floor_us` (none: no row); ``one_core``: a row for
    the rate at which the worker's CPU fills one core (a worker whose CPU is mostly Python: its threads share
    one interpreter lock)."""
    ms = budget.model_us >= 1000  # images of a large model: ms; events: µs
    unit, scale = ("ms", 1e-3) if ms else ("µs", 1.0)

    def cpu(us: float) -> str:
        return f"{scale * us:,.{2 if ms else 0}f} {unit}"

    name, rate = target
    left = budget.worker_us_at(rate)
    lines = [
        "| measure | value |",
        "| --- | ---: |",
        f"| cores | {budget.cores} |",
        f"| the bare model, CPU per {item} (measured apart, all its threads) | {cpu(budget.model_us)} |",
    ]
    if floor:
        lines.append(f"| {floor}, CPU per {item} (measured apart) | {cpu(budget.floor_us)} |")
    lines += [
        f"| Elasticsearch, Kafka and the producer, CPU per {item} in the pipeline run | {cpu(budget.services_us)} |",
        f"| the worker, CPU per {item} in the pipeline run | {cpu(budget.worker_us)} |",
        f"| the pipeline as measured, {item}s/s | {measured:,.0f} |",
        f"| {item}s/s at which that worker and the services would fill every core | {budget.as_measured:,.0f} |",
        *(
            [
                f"| {item}s/s at which that worker's CPU would fill one core (its Python threads share one "
                f"interpreter lock) | {1e6 / budget.worker_us:,.0f} |"
            ]
            if one_core
            else []
        ),
        f"| {item}s/s the cores allow a worker costing only the bare model{' and ' + floor if floor else ''} "
        f"(an upper bound for any worker here) | **{budget.leanest_worker:,.0f}** |",
        f"| target: {name} ({rate:,.0f} {item}s/s); CPU per {item} it leaves the worker after the services "
        f"| **{cpu(left) if left > 0 else 'none'}** |",
    ]
    return lines
