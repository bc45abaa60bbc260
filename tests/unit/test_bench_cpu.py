"""The benchmarks' CPU budget: the rates the cores allow, from CPU per item of one run."""

from __future__ import annotations

import os

import pytest

from bench.cpu import Budget, CpuMeter, budget_table, cpu_table

USED = {"worker": 1.2, "elasticsearch": 0.7, "kafka": 0.2, "bench": 0.1, "others": 0.05}
"""CPU seconds of a run of 10,000 items: the worker 120 µs an item, the services 100 µs."""


def test_budget_of_a_run_splits_worker_and_services() -> None:
    budget = Budget.of(USED, 10_000, model_us=5.0, floor_us=20.0)
    assert budget.cores == (os.cpu_count() or 1)
    assert budget.worker_us == pytest.approx(120.0)
    assert budget.services_us == pytest.approx(100.0)  # elasticsearch + kafka + the producer; not "others"


def test_rates_the_cores_allow() -> None:
    budget = Budget(cores=2, model_us=5.0, floor_us=20.0, services_us=100.0, worker_us=120.0)
    assert budget.as_measured == pytest.approx(2e6 / 220.0)
    assert budget.leanest_worker == pytest.approx(2e6 / 125.0)
    assert budget.worker_us_at(10_000) == pytest.approx(100.0)  # 200 µs of the cores per item, 100 for services
    assert budget.worker_us_at(40_000) < 0  # the services alone would need more than the cores


def test_budget_table_says_none_left_when_the_services_fill_the_cores() -> None:
    budget = Budget(cores=2, model_us=5.0, floor_us=20.0, services_us=100.0, worker_us=120.0)
    reachable = "\n".join(budget_table(budget, "event", 7_000.0, ("target", 10_000.0), floor="Faust's intake"))
    out_of_reach = "\n".join(budget_table(budget, "event", 7_000.0, ("target", 40_000.0), floor="Faust's intake"))
    assert "**100 µs**" in reachable
    assert "**none**" in out_of_reach
    assert "Faust's intake, CPU per event (measured apart) | 20 µs" in reachable
    assert "**16,000**" in reachable  # the leanest worker: 2 cores / 125 µs
    assert "interpreter lock" not in reachable


def test_budget_table_one_core_row() -> None:
    budget = Budget(cores=2, model_us=5.0, floor_us=20.0, services_us=100.0, worker_us=125.0)
    table = budget_table(budget, "event", 7_000.0, ("target", 10_000.0), one_core=True)
    row = "| events/s at which that worker's CPU would fill one core (its Python threads share one interpreter lock)"
    assert f"{row} | 8,000 |" in table


def test_budget_table_of_a_large_model_is_in_ms() -> None:
    budget = Budget(cores=2, model_us=20_000.0, floor_us=0.0, services_us=5_000.0, worker_us=30_000.0)
    table = "\n".join(budget_table(budget, "image", 40.0, ("0.80 of the bare model", 80.0)))
    assert "| the bare model, CPU per image (measured apart, all its threads) | 20.00 ms |" in table
    assert "**80**" in table  # 2 cores / 25 ms
    assert "Faust" not in table and "floor" not in table


def test_meter_diff_puts_the_rest_of_the_machine_in_others() -> None:
    before = {"worker": 1.0, "elasticsearch": 2.0, "bench": 0.5, "machine": 10.0}
    after = {"worker": 2.0, "elasticsearch": 2.5, "bench": 0.6, "machine": 12.0}
    assert CpuMeter.diff(before, after) == pytest.approx(
        {"worker": 1.0, "elasticsearch": 0.5, "bench": 0.1, "others": 0.4}
    )


def test_cpu_table_rows_per_item() -> None:
    lines = cpu_table("µs", [("run", USED, 10_000, 2.0)])
    assert lines[2].startswith("| run | 120 | 70 | 20 | 10 | 5 | 225 | 1.12 of ")


def test_meter_start_names_the_worker_and_used_since_counts_from_there() -> None:
    meter = CpuMeter({"worker": None})
    before = meter.start(os.getpid())  # this process stands in for the worker
    sum(i * i for i in range(200_000))
    used = meter.used_since(before)
    assert meter.pids["worker"] == os.getpid()
    assert set(used) == {"worker", "bench", "others"} and used["worker"] >= 0
