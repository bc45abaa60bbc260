"""``python -m bench.retrain``: retraining 10k archived images with Beam's DirectRunner and on a portable job
server (Beam's Prism, ``--runners``), by stage, against the same work in a plain Python loop.

Both sides start from the same archive (written with the product's own ArchiveWriter: the 1,797
digits and shifted copies of them under fresh ids, a label event for every image) and train the same head
candidates on the same embeddings. The Beam side is ``streamdl.streams.jobs.retrain`` itself (read = list +
count labels, embed = the Beam pipeline with RunInference, train, evaluate, register with MLflow); the plain side reads
the archive with pyarrow, decodes and embeds in a loop, then trains and evaluates the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from streamdl.infra.stack import LocalStack
from streamdl.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def digit_variants(count: int, seed: int = 0) -> tuple[list[bytes], list[int]]:
    """``count`` digit PNGs and labels: the 1,797 digits, then copies shifted by up to 2 pixels
    (so the test split does not hold exact copies of training images)."""
    import io

    from PIL import Image

    from streamdl.models.digits import load_digit_images

    images, labels = load_digit_images()
    rng = np.random.default_rng(seed)
    out, out_labels = [], []
    for i in range(count):
        pixels = images[i % len(images), :, :, 0]
        if i >= len(images):
            pixels = np.roll(pixels, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
        out_labels.append(int(labels[i % len(images)]))
    return out, out_labels


def write_archive(root: str, settings, count: int) -> list[str]:
    """``count`` digit images and a label event for each, archived as the archiver would."""
    from streamdl.connectors.archive_writer import ArchiveWriter
    from streamdl.records import to_json

    pngs, labels = digit_variants(count)
    writer = ArchiveWriter(root, max_file_messages=5000, max_file_secs=3600)
    now_ms = int(time.time() * 1000)
    ids = []
    for i, png in enumerate(pngs):
        image_id = f"bench-{i:06d}"
        ids.append(image_id)
        writer.add(settings.topic("images"), i % 4, i // 4, now_ms, image_id.encode(), png)
        event = {
            "id": f"label-{image_id}",
            "ts": now_ms / 1000,
            "type": "label",
            "image_id": image_id,
            "label": str(labels[i]),
        }
        writer.add(settings.topic("events"), i % 4, i // 4, now_ms, event["id"].encode(), to_json(event))
    writer.close_all()
    return ids


def plain(settings, root: str) -> dict:
    """The same retraining in a plain loop: read with pyarrow, decode, embed in batches, train, evaluate."""
    import json

    from streamdl.connectors.archive_reader import read_archive
    from streamdl.models.catalog import load_handler
    from streamdl.models.decode import DecodeLimits, decode_image
    from streamdl.models.retraining import heads
    from streamdl.streams.jobs.retrain_pipeline import split_of

    seconds = {}
    t = time.perf_counter()
    images = read_archive(root, settings.topic("images"), columns=["key", "value"]).to_table().to_pylist()
    events = read_archive(root, settings.topic("events"), columns=["value"]).to_table().to_pylist()
    label_of = {}
    for row in events:
        event = json.loads(row["value"])
        if event.get("type") == "label":
            label_of[event["image_id"]] = event["label"]
    rows = sorted((r["key"].decode(), r["value"]) for r in images if r["key"].decode() in label_of)
    seconds["read"] = time.perf_counter() - t

    t = time.perf_counter()
    handler = load_handler(settings.model_name, state_dir=settings.state_dir, batch_size=settings.max_batch_size)
    handler.load()
    info = handler.info()
    seconds["setup"] = time.perf_counter() - t
    t = time.perf_counter()
    limits = DecodeLimits(max_bytes=settings.max_message_bytes, max_pixels=settings.max_pixels)
    embeddings = []
    for start in range(0, len(rows), settings.max_batch_size):
        chunk = rows[start : start + settings.max_batch_size]
        pixels = np.stack([decode_image(data, info.input_size, info.channels, limits) for _, data in chunk])
        embeddings.append(handler.predict_batch(pixels).embeddings)
    x = np.concatenate(embeddings)
    seconds["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    split = np.array([split_of(image_id) for image_id, _ in rows])
    names = sorted({label_of[i] for i, _ in rows})
    y = np.array([names.index(label_of[i]) for i, _ in rows])
    train, val, test = split == "train", split == "validation", split == "test"
    trained = heads.train_head(x[train], y[train], x[val], y[val], len(names), heads.candidates())
    seconds["train"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluation = heads.evaluate(np.asarray(trained.model.predict(x[test], verbose=0)), y[test], names)
    seconds["evaluate"] = time.perf_counter() - t
    return {"seconds": seconds, "accuracy": evaluation.accuracy, "images": len(rows), "best": trained.candidate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrain", description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrain.md")
    parser.add_argument(
        "--runners", default="prism", help="portable runners to time too, comma-separated (prism; empty = none)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from streamdl.streams.jobs.retrain import retrain

    base = load_settings({"state_dir": ROOT / ".streamdl"}, env_file=None)
    LocalStack(base, say=lambda m: print(f"[stack] {m}", file=sys.stderr)).up()  # the announcement goes to Kafka
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as tmp:
        tag = f"benchretrain{int(time.time())}"
        settings = base.model_copy(
            update={
                "topic_prefix": f"{tag}.",
                "archive_url": str(Path(tmp) / "archive"),
                "mlflow_tracking_uri": f"sqlite:///{Path(tmp) / 'mlflow.db'}",
                "retrain_min_labels": 10,
            }
        )
        say(f"writing an archive of {args.images} images and labels")
        write_archive(settings.archive_url, settings, args.images)
        say("retraining with Beam (DirectRunner)")
        beam = retrain(settings, say=say)
        portable = {}
        for runner in filter(None, args.runners.split(",")):
            say(f"retraining with Beam on {runner} (a fresh registry)")
            fresh = settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{Path(tmp) / f'{runner}.db'}"})
            portable[runner] = retrain(fresh, beam_args=PORTABLE[runner], say=say)
        say("the same in a plain loop")
        loop = plain(settings, settings.archive_url)
    table = render(args.images, beam, loop, portable)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"<!-- python -m bench.retrain, {time.strftime('%Y-%m-%d %H:%M')} -->\n{table}\n")
    return 0


PORTABLE = {"prism": ["--runner=PrismRunner", "--environment_type=LOOPBACK"]}
"""Portable runners this machine can run (docs/beam-runners.md: Flink's and Spark's job servers are not served)."""


def render(images: int, beam, loop: dict, portable: dict | None = None) -> str:
    stages = ("setup", "read", "embed", "train", "evaluate")
    lines = [
        f"| {images} archived images | " + " | ".join(f"{s} (s)" for s in stages) + " | total (s) | test accuracy |",
        "| --- | " + " | ".join("---:" for _ in stages) + " | ---: | ---: |",
    ]
    rows = [("Beam DirectRunner (streamdl retrain)", beam.seconds, beam.metrics["test_accuracy"])]
    rows += [
        (f"Beam on {name} (portable job server, LOOPBACK)", r.seconds, r.metrics["test_accuracy"])
        for name, r in (portable or {}).items()
    ]
    rows.append(("plain Python loop", loop["seconds"], loop["accuracy"]))
    for name, seconds, accuracy in rows:
        total = sum(seconds.get(s, 0.0) for s in stages)
        lines.append(
            f"| {name} | "
            + " | ".join(f"{seconds.get(s, 0.0):.1f}" for s in stages)
            + f" | {total:.1f} | {accuracy:.4f} |"
        )
    b, p = beam.seconds, loop["seconds"]
    lines += [
        "",
        f"Beam / plain: read+embed {(b['read'] + b['embed']) / (p['read'] + p['embed']):.2f}x; "
        f"registering with MLflow (Beam side only) {b.get('register', 0):.1f}s; Beam status: {beam.status} "
        f"({beam.reason}).",
    ]
    return "\n".join(lines)


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
