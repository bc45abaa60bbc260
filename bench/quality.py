"""``python -m bench.quality``: what drift tracking adds to the image path, as one table row.

Per micro-batch of digits (digits-cnn, the worker's batch size): the image pipeline's ``compute`` (decode,
one model call, documents) against the drift tracker's ``observe`` on the same documents, and the cost of
closing one drift window (the three signals, MMD on two reservoirs). No broker: the write step (indexing,
publishing) only adds time to the path, so the share measured here is an upper bound of the overhead.
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
        "| --- | --- | --- | --- | --- | --- |\n" + row + "\n"
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Drift tracking on the image path (`python -m bench.quality`)\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
