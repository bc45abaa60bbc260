"""``python -m bench.quality``: what drift tracking adds to the image and the events paths, a table row each.

Images: per micro-batch of digits (digits-cnn, the worker's batch size), the image pipeline's ``compute``
(decode, one model call, documents) against the drift tracker's ``observe`` on the same documents, and the
cost of closing one drift window (the three signals, MMD on two reservoirs).

Events: per micro-batch of the sensor sample (sensors-ae), the events pipeline's ``compute`` (validate, one
model call, documents) against the per-feature drift tracker's ``observe`` (against a reference fitted on the
first 2,000 events, as one saved with the version), in microseconds per event, and closing one window (a PSI
per feature and the anomaly score). No broker: the write step (indexing, publishing) only adds time to each
path, so the shares measured here are upper bounds of the overhead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench.inputs import digit_pngs
from streamdl.records import InMessage
from streamdl.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--event-batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from streamdl.streams.agents.worker import make_handler
    from streamdl.streams.pipelines.images import ImagePipeline
    from streamdl.streams.quality.drift import DriftTracker, compare

    settings = load_settings({"max_batch_size": args.batch_size, "drift_window_secs": 1e9}, env_file=None)
    handler = make_handler(settings)
    handler.load()
    pipeline = ImagePipeline(settings, handler)
    pipeline.info = handler.info()
    tracker = DriftTracker(settings)
    pngs = digit_pngs(args.batch_size * args.batches)
    compute, observe = [], []
    for b in range(args.batches):
        batch = [
            InMessage(f"d{b}-{i}".encode(), png, "images", 0, b * args.batch_size + i)
            for i, png in enumerate(pngs[b * args.batch_size : (b + 1) * args.batch_size])
        ]
        t0 = time.perf_counter()
        computed = pipeline.compute(batch)
        t1 = time.perf_counter()
        tracker.observe(computed.documents)
        t2 = time.perf_counter()
        compute.append(t1 - t0)
        observe.append(t2 - t1)
    state = next(iter(tracker.versions.values()))
    t0 = time.perf_counter()
    compare(state.reference, state.window, state.bandwidth)
    close = time.perf_counter() - t0
    c, o = statistics.median(compute), statistics.median(observe)
    row = (
        f"| {settings.model_name} | {args.batch_size} | {c * 1000:.2f} | {o * 1000:.3f} | {100 * o / c:.2f}% "
        f"| {close * 1000:.1f} |"
    )
    table = (
        "| model | batch | compute ms (median) | drift observe ms (median) | overhead | window close ms |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + row + "\n\n"
        "| event model | batch | compute µs/event (median) | feature drift observe µs/event (median) | overhead "
        "| window close ms |\n| --- | --- | --- | --- | --- | --- |\n"
        + events_row(args.event_batch_size, args.batches)
        + "\n"
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Drift tracking on the image and events paths (`python -m bench.quality`)\n\n{table}")
    return 0


def events_row(batch_size: int, batches: int) -> str:
    """The events path's row: compute and per-feature drift per batch of sensor events (µs per event)."""
    from bench.events import with_id
    from streamdl.models.event_handler import load_event_handler
    from streamdl.models.sensor_sample import sensor_events
    from streamdl.streams.pipelines.events import EventPipeline
    from streamdl.streams.quality.feature_drift import FeatureDriftTracker, fit_reference, row_of

    settings = load_settings({"max_batch_size": batch_size, "drift_window_secs": 1e9}, env_file=None)
    handler = load_event_handler(settings.event_model, settings.state_dir)
    handler.load()
    pipeline = EventPipeline(settings, handler)
    pipeline.info = handler.info()
    events = list(sensor_events(days=max(1.0, (2000 + batch_size * batches) / (6 * 1440))))
    reference = [
        row_of(d.body)
        for s in range(0, 2000, batch_size)
        for d in pipeline.compute(_messages(events[s : s + batch_size], s, with_id)).documents
    ]
    saved = fit_reference(reference, settings.drift_max_features, settings.drift_top_categories)
    tracker = FeatureDriftTracker(settings, references=lambda name, version: saved)
    compute, observe = [], []
    for b in range(batches):
        start = 2000 + b * batch_size
        batch = _messages(events[start : start + batch_size], start, with_id)
        t0 = time.perf_counter()
        computed = pipeline.compute(batch)
        t1 = time.perf_counter()
        tracker.observe(computed.documents)
        t2 = time.perf_counter()
        compute.append((t1 - t0) / len(batch))
        observe.append((t2 - t1) / len(batch))
    state = next(iter(tracker.versions.values()))
    t0 = time.perf_counter()
    state.counts.psi()
    close = time.perf_counter() - t0
    c, o = statistics.median(compute), statistics.median(observe)
    return (
        f"| {handler.info().name} ({len(saved.signals())} signals) | {batch_size} "
        f"| {c * 1e6:.1f} | {o * 1e6:.2f} | {100 * o / c:.2f}% | {close * 1000:.2f} |"
    )


def _messages(events: list[dict], start: int, with_id) -> list[InMessage]:
    return [
        InMessage(f"e{start + i}".encode(), with_id(e, f"e{start + i}"), "events", 0, start + i)
        for i, e in enumerate(events)
    ]


if __name__ == "__main__":
    raise SystemExit(main())
