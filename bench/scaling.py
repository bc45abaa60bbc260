"""``python -m bench.scaling``: images/s with 1, 2 and 4 worker processes in one consumer group on an
8-partition topic, on the local Kafka and Elasticsearch.

For each worker count N: N ``streamdl worker`` processes (images agent only, the default model) share a
fresh topic of 8 partitions, their own indices and group. *join* is the time from starting them until the
group holds N members that own all 8 partitions (the rebalance the scale-out costs); then ``--images``
digits are produced as fast as possible and *rate* is images until all are searchable. Each worker's
share comes from its own ``streamdl_batch_size`` sum; the per-stage costs from its
``streamdl_stage_seconds``. The machine's cores and load are written beside the table (it is shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from streamdl.infra.process import free_port
from streamdl.infra.stack import LocalStack
from streamdl.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8


def group_members(settings: Settings) -> dict[str, int]:
    """``{member id: partitions of the images topic owned}`` of the workers' consumer group now."""
    from streamdl.connectors.kafka_admin import admin_client

    admin = admin_client(settings)
    group = settings.consumer_group
    described = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    topic = settings.topic("images")
    return {m.member_id: sum(tp.topic == topic for tp in m.assignment.topic_partitions) for m in described.members}


def run_workers(base: Settings, log_dir: Path, workers: int, images: list[bytes], total: int) -> dict:
    """One measurement with ``workers`` processes (bench.pipeline's BenchStack and N-1 more workers in its
    group); everything it made is removed afterwards."""
    from bench.pipeline import BenchStack
    from streamdl.streams.agents.worker_process import WorkerProcess

    t0 = time.perf_counter()
    stack = BenchStack(base, log_dir, topic_partitions=PARTITIONS)
    procs = [stack.worker]
    try:
        for i in range(1, workers):
            own = stack.settings.model_copy(update={"metrics_port": free_port()})
            procs.append(WorkerProcess(own, log_dir / f"{stack.tag}-{i}.log").start(timeout=600))
        started = time.perf_counter() - t0
        while True:
            members = group_members(stack.settings)
            if len(members) == workers and sum(members.values()) >= PARTITIONS:
                break
            if time.perf_counter() - t0 > 300:
                raise RuntimeError(f"the group did not settle on {workers} members: {members}")
            time.sleep(0.2)
        joined = time.perf_counter() - t0
        run = stack.run(images, total)
        if not all(p.alive for p in procs):
            raise RuntimeError("a worker died:\n" + "\n".join(p.tail() for p in procs if not p.alive))
        shares = [p.metric("streamdl_batch_size_sum", "stream").get("images", 0.0) for p in procs]
        stages: dict[str, float] = {}
        for p in procs:
            for stage, value in p.metric("streamdl_stage_seconds_sum", "stage").items():
                stages[stage] = stages.get(stage, 0.0) + value
        return {
            "workers": workers,
            "start": started,
            "join": joined,
            "seconds": run.seconds,
            "rate": run.rate,
            "shares": shares,
            "partitions": sorted(members.values()),
            "ms_per_image": {k: 1000 * v / total for k, v in stages.items()},
        }
    finally:
        for p in procs[1:]:
            p.stop()
        stack.close()


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) "
        "at the start, the local Kafka and Elasticsearch on the same cores"
    )


def render(rows: list[dict], total: int, state: str) -> str:
    base = rows[0]["rate"]
    lines = [
        f"{total} digits images per run, topic of {PARTITIONS} partitions, default model (digits-cnn). "
        f"Machine: {state}.",
        "",
        "| workers | partitions per worker | start (s) | join: all partitions owned (s) | images/s "
        "| speed-up | images/s per worker | share per worker (images) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {'/'.join(map(str, r['partitions']))} | {r['start']:.1f} | {r['join']:.1f} "
            f"| {r['rate']:.0f} | {r['rate'] / base:.2f}x | {r['rate'] / r['workers']:.0f} "
            f"| {' / '.join(f'{s:.0f}' for s in r['shares'])} |"
        )
    stages = sorted({k for r in rows for k in r["ms_per_image"]})
    lines += [
        "",
        "Stage time per image, summed over the workers (ms, wall clock per stage from `streamdl_stage_seconds`):",
        "",
        "| workers | " + " | ".join(stages) + " |",
        "| ---: | " + " | ".join("---:" for _ in stages) + " |",
    ]
    for r in rows:
        lines.append(f"| {r['workers']} | " + " | ".join(f"{r['ms_per_image'].get(s, 0):.2f}" for s in stages) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scaling.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.inputs import digit_pngs

    base = load_settings({"state_dir": ROOT / ".streamdl"}, env_file=None)
    LocalStack(base, say=lambda m: print(f"[stack] {m}", file=sys.stderr)).up()
    state = machine()
    images = digit_pngs(1797)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        for n in (int(x) for x in args.workers.split(",")):
            print(f"[bench] {n} worker(s)", file=sys.stderr, flush=True)
            rows.append(run_workers(base, Path(tmp), n, images, args.images))
            print(f"[bench] {rows[-1]}", file=sys.stderr, flush=True)
    table = render(rows, args.images, state)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"<!-- python -m bench.scaling, {time.strftime('%Y-%m-%d %H:%M')} -->\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
