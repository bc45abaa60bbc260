"""``python -m bench``: the image pipeline against the bare model, batching, latency and memory, as one table.

Each model gets, in one run on this machine: bare ``predict_batch`` throughput at the worker's
batch size; one image per call; the whole pipeline (produce -> searchable in Elasticsearch);
produce-to-prediction latency at half the measured pipeline rate; the worker's peak memory
after the given image counts; the CPU each process used per image in the pipeline run, and what the machine's
cores allow a worker at those costs (:mod:`bench.cpu`): the rate a worker costing only the bare model could
reach, against the target share of the bare model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from bench.cpu import Budget, CpuMeter, budget_table, cpu_table
from bench.inputs import digit_pngs, photo_jpegs
from bench.pipeline import BenchStack, model_rate
from streamdl.infra.stack import LocalStack
from streamdl.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
TARGET_SHARE_OF_BARE = {"digits-cnn": 0.35, "MobileNetV2": 0.8}
"""Issue 11's targets: the pipeline's rate as a share of the bare model's."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--digits-images",
        type=int,
        default=100_000,
        help="pipeline images for digits-cnn (memory checkpoints at 10k and at this)",
    )
    parser.add_argument("--mobilenet-images", type=int, default=1024, help="pipeline images for MobileNetV2")
    parser.add_argument("--models", default="digits-cnn,MobileNetV2", help="comma-separated: digits-cnn, MobileNetV2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    settings = load_settings(
        {"state_dir": ROOT / ".streamdl", "max_batch_size": args.batch_size, "max_batch_duration_secs": 0.2},
        env_file=None,
    )
    local = LocalStack(settings, say=lambda m: print(f"[stack] {m}", file=sys.stderr))
    local.up()
    meter = CpuMeter(
        {"worker": None, "elasticsearch": local.service("elasticsearch").pid(), "kafka": local.service("kafka").pid()}
    )
    log_dir = settings.state_dir.resolve() / "logs"

    available = {
        "digits-cnn": lambda: ("digits-cnn", None, digit_pngs(1797), args.digits_images, (10_000, args.digits_images)),
        "MobileNetV2": lambda: ("MobileNetV2", None, photo_jpegs(256), args.mobilenet_images, ()),
    }
    configs = [available[name]() for name in args.models.split(",")]

    rows = []
    for model, weights, images, total, checkpoints in configs:
        say(f"{model}: bare model, batch {args.batch_size} and 1 per call")
        sample = images[: min(len(images), 2048 if model == "digits-cnn" else 256)]
        bare, bare_cpu_us = model_rate(model, weights, settings.state_dir, args.batch_size, sample)
        single, _ = model_rate(
            model, weights, settings.state_dir, 1, sample[: 300 if model == "digits-cnn" else 32], repeats=1
        )
        say(f"{model}: pipeline with {total} images")
        bench = BenchStack(settings, log_dir, model_name=model, model_weights=weights or "none")
        try:
            run = bench.run(images, total, checkpoints, meter)
            cpu = bench.cpu
            stages = bench.stage_seconds()
            rate = run.rate / 2
            count = int(min(max(rate * 20, 100), 3000))
            say(f"{model}: latency at {rate:.0f} images/s for {count} images")
            p50, p99 = bench.latency(images, rate, count)
        finally:
            bench.close()
        rows.append(
            {
                "model": model + (" (random weights)" if model != "digits-cnn" else ""),
                "bare": bare,
                "single": single,
                "pipeline": run.rate,
                "images": total,
                "p50": p50,
                "p99": p99,
                "rate": rate,
                "rss": {n: b / 2**20 for n, b in run.rss_at.items()},
                "stages": {k: 1000 * v / total for k, v in stages.items()},
                "wall": 1000 * run.seconds / total,
                "cpu": cpu,
                "seconds": run.seconds,
                "budget": Budget.of(cpu, total, bare_cpu_us),
            }
        )
    table = render(rows, args.batch_size)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"<!-- python -m bench, {time.strftime('%Y-%m-%d %H:%M')} -->\n{table}\n")
    return 0


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def render(rows: list[dict], batch_size: int) -> str:
    stages = ("decode", "model", "documents", "neighbours", "index", "publish")
    where = [
        "",
        "Where the time goes (ms per image, from the worker's streamdl_stage_seconds; decode, model and documents (the",
        "documents and predictions) run on one thread, neighbours (the lookups) then index (the bulk) on a second,",
        "publish on a third, overlapped across batches, so the stages can add up to more than the wall time):",
        "",
        "| model | " + " | ".join(stages) + " | wall time per image |",
        "| --- | " + " | ".join("---:" for _ in stages) + " | ---: |",
    ]
    for r in rows:
        where.append(
            f"| {r['model']} | " + " | ".join(f"{r['stages'].get(s, 0):.2f}" for s in stages) + f" | {r['wall']:.2f} |"
        )
    lines = [
        f"| model | bare predict_batch (img/s, batch {batch_size}) | one image per call (img/s) "
        "| micro-batch / one-per-call | pipeline produce→searchable (img/s) | pipeline / bare "
        "| latency p50 / p99 (ms) at half max rate | worker peak RSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        rss = ", ".join(f"{mib:.0f} MiB after {n // 1000}k" for n, mib in sorted(r["rss"].items())) or "-"
        lines.append(
            f"| {r['model']} | {r['bare']:.0f} | {r['single']:.1f} | {r['bare'] / r['single']:.1f}x | "
            f"{r['pipeline']:.0f} ({r['images']} images) | {r['pipeline'] / r['bare']:.2f} | "
            f"{r['p50']:.0f} / {r['p99']:.0f} at {r['rate']:.0f}/s | {rss} |"
        )
    cpu = [
        "",
        "CPU per image (ms of CPU, all threads, from /proc, during the pipeline run; bench = this producer process;",
        "others = the rest of the machine), and the share of the machine's cores in use:",
        "",
        *cpu_table("ms", [(r["model"], r["cpu"], r["images"], r["seconds"]) for r in rows]),
    ]
    for r in rows:
        target = TARGET_SHARE_OF_BARE[r["model"].split(" ")[0]]
        cpu += [
            "",
            f"What this machine's cores allow {r['model']} (the services' CPU as in its pipeline run, the bare model's "
            "measured apart):",
            "",
            *budget_table(r["budget"], "image", r["pipeline"], (f"{target:.2f} of the bare model", target * r["bare"])),
            f"| the leanest worker's rate / bare | **{r['budget'].leanest_worker / r['bare']:.2f}** |",
        ]
    return "\n".join(lines + where + cpu)


if __name__ == "__main__":
    sys.exit(main())
