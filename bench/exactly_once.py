"""``python -m bench.exactly_once``: images/s of one worker under each ``STREAMDL_PROCESSING_GUARANTEE``.

Each round starts a fresh worker (images agent, the default model) with its own topics, indices and group on
the local Kafka and Elasticsearch, produces ``--images`` digits as fast as possible and times until all are
searchable (``bench.pipeline.BenchStack.run``). The modes alternate (``at_least_once``, ``exactly_once``, then
the other way round, ...) so that a drift of the shared machine's load falls on both. *publish* is the sinks'
time per batch, *commit* the per-batch transaction commit that follows it under ``exactly_once`` (both from
``streamdl_stage_seconds``); the rates show what they cost together.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from streamdl.infra.stack import LocalStack
from streamdl.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
MODES = ("at_least_once", "exactly_once")


def one_round(base: Settings, log_dir: Path, mode: str, images: list[bytes], total: int) -> dict:
    """One worker under ``mode``; everything it made is removed afterwards."""
    from bench.pipeline import BenchStack

    stack = BenchStack(base, log_dir, processing_guarantee=mode)
    try:
        run = stack.run(images, total)
        stages = stack.stage_seconds()
        batches = sum(stack.worker.metric("streamdl_batch_size_count", "stream").values())
        return {
            "mode": mode,
            "seconds": run.seconds,
            "rate": run.rate,
            "batches": batches,
            "publish_ms_per_batch": 1000 * stages.get("publish", 0.0) / max(batches, 1),
            "commit_ms_per_batch": 1000 * stages.get("commit", 0.0) / max(batches, 1),
        }
    finally:
        stack.close()


def render(rows: list[dict], total: int, state: str) -> str:
    lines = [
        f"{total} digits images per round, one worker, default model (digits-cnn), batches of at most "
        f"64. Machine: {state}.",
        "",
        "| round | guarantee | seconds | images/s | batches | publish ms per batch | commit ms per batch |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(
            f"| {i} | {r['mode']} | {r['seconds']:.1f} | {r['rate']:.0f} | {r['batches']:.0f} "
            f"| {r['publish_ms_per_batch']:.1f} | {r['commit_ms_per_batch']:.1f} |"
        )
    means = {
        m: sum(r["rate"] for r in rows if r["mode"] == m) / max(1, sum(r["mode"] == m for r in rows)) for m in MODES
    }
    ratio = means["exactly_once"] / means["at_least_once"] if means["at_least_once"] else 0.0
    lines += [
        "",
        f"Mean images/s: at_least_once {means['at_least_once']:.0f}, exactly_once {means['exactly_once']:.0f} "
        f"(exactly_once at {100 * ratio:.0f} % of at_least_once).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.exactly_once", description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode (alternated)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "exactly_once.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.inputs import digit_pngs
    from bench.scaling import machine

    base = load_settings({"state_dir": ROOT / ".streamdl", "max_batch_duration_secs": 0.2}, env_file=None)
    LocalStack(base, say=lambda m: print(f"[stack] {m}", file=sys.stderr)).up()
    state = machine()
    images = digit_pngs(1797)
    order = [m for i in range(args.rounds) for m in (MODES if i % 2 == 0 else MODES[::-1])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-eos-") as tmp:
        for mode in order:
            rows.append(one_round(base, Path(tmp), mode, images, args.images))
            print(f"[bench] {rows[-1]}", file=sys.stderr, flush=True)
    table = render(rows, args.images, state)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"<!-- python -m bench.exactly_once, {time.strftime('%Y-%m-%d %H:%M')} -->\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
