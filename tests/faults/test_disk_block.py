"""Elasticsearch's disk at the flood-stage watermark: the indices turn read-only
(``index.blocks.read_only_allow_delete``) for 30 s mid-stream. Bulk items then fail with a
``cluster_block_exception``; the worker must wait (not dead-letter, not skip), raise one ``sink_blocked``
alert, and catch up once the block is lifted."""

from __future__ import annotations

import json
import time

import pytest

from streamdl.connectors.es_client import es_client
from tests.faults.harness import account, assert_accounted, read_all, recovery, report, row, seconds

pytestmark = pytest.mark.faults

COUNT = 5_400
RATE = 100.0
BLOCK = "index.blocks.read_only_allow_delete"
FIRST_DISK_CHECK = 70.0
"""Seconds after its start by which a node has made its first disk check (``cluster.info.update.interval``
30 s after it is elected, plus the start)."""


def wait_first_disk_check(es) -> None:
    """With the disk threshold off (the local stack's setting) Elasticsearch lifts flood-stage blocks at its disk
    check, which a node makes once in its first minute (seen 3-6 s into a block set 20 s after the node
    started): wait until that is past."""
    uptime = min(n["jvm"]["uptime_in_millis"] for n in es.nodes.stats(metric="jvm")["nodes"].values()) / 1000
    time.sleep(max(0.0, FIRST_DISK_CHECK - uptime))


def hold_block(es, indices: str, secs: float) -> None:
    """Keep the flood-stage block on for ``secs``, as a disk that stays full does: set again should
    Elasticsearch lift it all the same."""
    end = time.monotonic() + secs
    while time.monotonic() < end:
        found = es.indices.get_settings(index=indices, name=BLOCK, flat_settings=True)
        if any(s["settings"].get(BLOCK) != "true" for s in found.values()) or not found:
            es.indices.put_settings(index=indices, settings={BLOCK: True})  # what the flood stage sets
        time.sleep(0.5)


def test_indices_read_only_for_30_seconds(fault_run, fault_results):
    run = fault_run
    worker = run.worker()
    es = es_client(run.settings)
    indices = f"{run.settings.index_prefix}*"
    wait_first_disk_check(es)
    with run.streaming("block", COUNT, RATE) as (plan, monitor, producer):
        monitor.wait_outputs(1_500, timeout=180, alive=run.alive)
        lag_before = monitor.max_lag()
        t_block = monitor.now()
        hold_block(es, indices, 30)
        run.alive()
        during = [s for s in monitor.samples if s.t >= t_block + 5 and s.committed is not None]
        es.indices.put_settings(index=indices, settings={BLOCK: None})
        t_back = monitor.now()
        producer.finish()
        acc = account(run.settings, plan, monitor, alive=run.alive)
    alerts = [json.loads(m.value()) for m in read_all(run.settings, run.settings.topic("alerts"))]
    blocked = [a for a in alerts if a["rule"] == "sink_blocked"]
    peak = monitor.max_lag(since=t_block)
    drained = monitor.drained_after(t_back, below=2 * run.settings.max_batch_size)
    es.indices.refresh(index=run.settings.alias("alerts"))
    indexed_alert = es.options(ignore_status=404).get(
        index=run.settings.alias("alerts"), id=blocked[0]["alert_id"] if blocked else "-"
    )
    r = row(
        "es-read-only",
        "ES indices read-only (flood-stage block) 30 s mid-stream",
        acc,
        recovery(monitor, t_back, 2 * run.settings.max_batch_size),
        f"worker waited: nothing committed while blocked, nothing dead-lettered for it; consumer lag {lag_before:,} "
        f"before, max {peak:,}, back to <= {2 * run.settings.max_batch_size} {seconds([drained])} after the block "
        f"was lifted; sink_blocked alerts {len(blocked)}",
    )
    report(fault_results, r)
    assert worker.alive
    assert during and during[0].committed == during[-1].committed, [(s.t, s.committed) for s in during]
    assert len(blocked) == 1, blocked
    assert indexed_alert.get("found"), "the sink_blocked alert was not indexed after the block was lifted"
    assert drained is not None
    assert_accounted(acc, plan)  # no good message dead-lettered (index_rejected), none lost
