"""``python -m bench.shadow``: what a shadow or a canary version adds to the image path's compute step.

Per micro-batch of digits (digits-cnn, the worker's batch size), the image pipeline's ``compute`` (decode, the
champion's model call, documents) alone and with: a shadow head on the champion's featurizer (its head alone on
the champion's embeddings), a shadow on another featurizer (its whole model on the pixels: here the digits CNN
again with a softmax head, the cost of any second featurizer of that size), and a canary on 10 % of the ids.
The variants take turns batch by batch in one run, so they share the machine's noise; no broker (indexing the
shadow's documents and publishing them add a bulk item and a message per image to the write step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.inputs import digit_pngs
from streamdl.records import InMessage
from streamdl.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shadow", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=60, help="batches per variant")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shadow.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from streamdl.models.catalog import load_handler
    from streamdl.models.retraining import heads
    from streamdl.streams.agents.worker import make_handler
    from streamdl.streams.pipelines.images import ImagePipeline
    from streamdl.streams.pipelines.roles import CANARY, SHADOW, Side

    settings = load_settings({"max_batch_size": args.batch_size}, env_file=None)
    champion = make_handler(settings)
    champion.load()
    info = champion.info()
    with tempfile.TemporaryDirectory() as tmp:
        model = heads.build_head("softmax", info.embedding_size, len(info.labels), 0.0)
        meta = {"name": "bench-head", "version": "2", "model_name": info.name, "model_version": "2"}
        path = heads.save_head(model, Path(tmp) / "head", {**meta, "labels": list(info.labels)})
        other = load_handler(settings.model_name, state_dir=settings.state_dir, batch_size=args.batch_size, head=path)
        other.load()
    head_info = other.info()
    variants = {
        "champion alone": None,
        "+ shadow, same featurizer (head on the champion's embeddings)": (SHADOW, True, 0.0),
        "+ shadow, another featurizer (its whole model on the pixels)": (SHADOW, False, 0.0),
        "+ canary on 10% of the ids (head on their embeddings)": (CANARY, True, 0.1),
    }
    pipelines = {}
    for name, side in variants.items():
        pipeline = ImagePipeline(settings, champion)
        pipeline.info = info
        if side is not None:
            role, shares, fraction = side
            pipeline.sides.offer(role, Side(role, other, head_info, shares, fraction))
        pipelines[name] = pipeline
    pngs = digit_pngs(args.batch_size * args.batches)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    own: dict[str, list[float]] = {name: [] for name in variants}
    """The side's own stage (``shadow`` / ``canary`` in the batch's seconds): its call and its outputs."""
    for b in range(args.batches + 2):  # the first two rounds warm up
        batch = [
            InMessage(f"d{b}-{i}".encode(), png, "images", 0, b * args.batch_size + i)
            for i, png in enumerate(
                pngs[(b % args.batches) * args.batch_size : (b % args.batches + 1) * args.batch_size]
            )
        ]
        for name, pipeline in pipelines.items():
            t0 = time.perf_counter()
            computed = pipeline.compute(batch)
            if b >= 2:
                seconds[name].append(time.perf_counter() - t0)
                own[name].append(computed.seconds.get("shadow", computed.seconds.get("canary", 0.0)))
    base = statistics.median(seconds["champion alone"])
    rows = [
        f"| {name} | {statistics.median(s) * 1000:.2f} | {100 * (statistics.median(s) / base - 1):+.1f}% "
        f"| {statistics.median(own[name]) * 1000:.2f} |"
        for name, s in seconds.items()
    ]
    table = (
        f"{settings.model_name}, batch {args.batch_size}, {args.batches} batches per variant, taking turns\n\n"
        "| compute step | ms per batch (median) | against the champion alone | the side's own stage ms (median) |\n"
        "| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Shadow and canary on the image path (`python -m bench.shadow`)\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
