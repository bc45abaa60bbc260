"""``python -m bench.steps``: the events pipeline's three steps overlapped as the worker runs them, without Faust.

The same :class:`~streamdl.streams.agents.batch_steps.BatchSteps` and ``EventPipeline`` as the worker, fed
pre-built messages in batches of ``--batch-size`` from memory (no consumer), against the running local stack
(its own topics and indices per run): how fast the steps go when nothing else limits them, for each group size
of the group commit (``STREAMDL_EVENTS_INDEX_BATCHES``), and how busy each step's thread was. Beside
``bench.events``' plain loop (serial, with a consumer) and its Faust worker, it tells the steps' own ceiling
from the intake's. The groups run in turns, ``--rounds`` times, so that a change of the machine's load hits
all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.events import sensor_sample, with_id
from bench.scaling import machine
from streamdl.alert_rules import load_rules
from streamdl.connectors.es_client import es_client
from streamdl.connectors.setup import init_all
from streamdl.models.event_handler import load_event_handler
from streamdl.records import InMessage
from streamdl.settings import Settings, load_settings
from streamdl.streams.agents.batch_steps import BatchSteps
from streamdl.streams.pipelines.events import EventPipeline

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("compute", "index_documents", "publish")


@dataclass
class StepsRun:
    """One run: events through the steps, the wall time, and each step's calls as (start, end) times."""

    group: int
    events: int
    seconds: float
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def mean_ms(self, step: str) -> float:
        spans = self.spans[step]
        return 1000 * sum(end - start for start, end in spans) / len(spans)

    def busy(self, step: str) -> float:
        """The share of the run the step's thread spent in the step."""
        return sum(end - start for start, end in self.spans[step]) / self.seconds


def _timed(call: Callable, spans: list[tuple[float, float]]) -> Callable:
    def timed(arg):
        start = time.perf_counter()
        try:
            return call(arg)
        finally:
            spans.append((start, time.perf_counter()))

    return timed


def run_steps(base: Settings, handler, events: list[dict], batch_size: int, group: int) -> StepsRun:
    """``events`` through a fresh ``EventPipeline`` (own topics and indices) on ``BatchSteps(group=group)``."""
    tag = f"benchsteps{uuid.uuid4().hex[:6]}"
    settings = base.model_copy(update={"topic_prefix": f"{tag}.", "index_prefix": f"{tag}-", "log_level": "WARNING"})
    init_all(settings)
    rules = load_rules(settings.alert_rules_file, settings.alert_throttle_secs)
    pipeline = EventPipeline(settings, handler, rules)
    pipeline.setup()
    messages = [
        InMessage(f"{tag}-{i}".encode(), with_id(e, f"{tag}-{i}"), settings.topic("events"), 0, i)
        for i, e in enumerate(events)
    ]
    batches = [messages[s : s + batch_size] for s in range(0, len(messages), batch_size)]
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for step in STEPS:
        setattr(pipeline, step, _timed(getattr(pipeline, step), spans[step]))

    async def drive() -> None:
        steps = BatchSteps(tag, pipeline, threading.Event(), group=group)

        async def done() -> None:
            pass

        try:
            for batch in batches:
                await steps.run(batch, done)
            await steps.finish()
        finally:
            steps.shutdown()

    try:
        start = time.perf_counter()
        asyncio.run(drive())
        return StepsRun(group, len(messages), time.perf_counter() - start, dict(spans))
    finally:
        pipeline.close()
        es = es_client(settings)
        es.options(ignore_status=404).indices.delete(index=f"{tag}-*")
        es.close()


def render(runs: list[StepsRun], args: argparse.Namespace) -> str:
    lines = [
        f"Events through BatchSteps without Faust ({args.events} events, batches of {args.batch_size}, "
        f"{args.rounds} rounds in turns); {machine()}",
        "",
        "| group | round | events/s | vs group 1 | compute ms / busy | index ms / busy | publish ms / busy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    single = {i: r.rate for i, r in enumerate(r for r in runs if r.group == 1)}
    counts: dict[int, int] = defaultdict(int)
    for run in runs:
        n = counts[run.group]
        counts[run.group] += 1
        ratio = f"{run.rate / single[n]:.2f}" if n in single else "-"
        steps = " | ".join(f"{run.mean_ms(s):.1f} / {run.busy(s):.0%}" for s in STEPS)
        lines.append(f"| {run.group} | {n + 1} | {run.rate:,.0f} | {ratio} | {steps} |")
    lines += [
        "",
        "ms: mean per call of the step (a call takes a whole group: compute stays one batch); busy: the share of "
        "the run its thread spent in it.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--groups", default="1,2,4", help="group sizes to compare (events_index_batches)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "steps.md")
    args = parser.parse_args(argv)
    base = load_settings()
    handler = load_event_handler(base.event_model, base.state_dir)
    handler.load()
    events = sensor_sample(args.events)
    groups = [int(g) for g in args.groups.split(",")]
    runs = []
    for _ in range(args.rounds):
        for group in groups:
            runs.append(run_steps(base, handler, events, args.batch_size, group))
            print(f"[bench.steps] group {group}: {runs[-1].rate:,.0f} events/s", flush=True)
    table = render(runs, args)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
