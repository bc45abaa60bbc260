"""``python -m bench.index_folder``: batch indexing of a generated folder of images into Elasticsearch, the
Python API's ``index_folder`` (also ``streamdl index folder PATH``), against the ancestor's published figure.

The folder holds ``--images`` distinct PNGs (scikit-learn's digits upscaled to ``--size`` pixels, each with its
own random shift, colour tint and noise, so every file has its own content-hash id). The first run featurizes
and indexes all of them with the documents the worker writes; a second run over the same folder shows the
resume path (every id is found indexed, nothing is decoded). Deep Learning Pipelines published ~34,000 images
featurized in ~10 minutes on a Spark cluster (InceptionV3): ~57 images/s.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from streamdl.infra.stack import LocalStack
from streamdl.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
ANCESTOR_IMAGES, ANCESTOR_SECONDS = 34_000, 600.0
"""Deep Learning Pipelines' featurization figure: ~34,000 images in ~10 minutes on a Spark cluster."""


def write_images(folder: Path, count: int, size: int = 64, seed: int = 0) -> None:
    """``count`` distinct digit PNGs of ``size`` pixels in one sub-folder per digit."""
    from PIL import Image

    from streamdl.models.digits import load_digit_images

    images, labels = load_digit_images()
    rng = np.random.default_rng(seed)
    for label in range(10):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        gray = Image.fromarray(images[i % len(images), :, :, 0]).resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.roll(np.asarray(gray, np.float32), tuple(rng.integers(-size // 10, size // 10 + 1, 2)), (0, 1))
        tint = rng.uniform(0.6, 1.0, 3)
        rgb = pixels[:, :, None] * tint + rng.normal(0, 6, (size, size, 3))
        buffer = io.BytesIO()
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
        (folder / str(int(labels[i % len(images)])) / f"img-{i:06d}.png").write_bytes(buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.index_folder", description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64, help="side of the generated images, pixels (default 64)")
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--weights", default="imagenet", help="Keras applications: imagenet, a file or none")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "index_folder.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from streamdl.connectors.es_client import es_client
    from streamdl.connectors.setup import init_all
    from streamdl.streams.api import index_folder

    base = load_settings({"state_dir": ROOT / ".streamdl"}, env_file=None)
    LocalStack(base, say=lambda m: print(f"[stack] {m}", file=sys.stderr)).up()
    tag = f"benchfolder{uuid.uuid4().hex[:6]}"
    settings = base.model_copy(
        update={
            "topic_prefix": f"{tag}.",
            "index_prefix": f"{tag}-",
            "model_name": args.model,
            "model_weights": None if args.weights == "none" else args.weights,
            "max_batch_size": args.batch_size,
            "mlflow_tracking_uri": None,
        }
    )
    init_all(settings)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-index-folder-") as tmp:
            t0 = time.perf_counter()
            write_images(Path(tmp), args.images, args.size)
            say(f"wrote {args.images} images of {args.size}x{args.size} in {time.perf_counter() - t0:.1f}s")
            first = index_folder(tmp, settings=settings)
            say(first.summary())
            again = index_folder(tmp, settings=settings)
            say(again.summary())
    finally:
        es_client(settings).options(ignore_status=404).indices.delete(index=f"{tag}-*")
        from streamdl.connectors.kafka_admin import admin_client

        admin = admin_client(settings)
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tag)]
        if topics:
            admin.delete_topics(topics, operation_timeout=30)
    table = render(args, first, again)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"<!-- python -m bench.index_folder, {time.strftime('%Y-%m-%d %H:%M')} -->\n{table}\n")
    return 0


def render(args, first, again) -> str:
    ancestor = ANCESTOR_IMAGES / ANCESTOR_SECONDS
    cores = os.cpu_count()
    lines = [
        "| run | images | indexed | skipped (already indexed) | setup (s) | seconds | images/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| index_folder, first run ({first.model_name} v{first.model_version}, {args.size}px PNGs, batch "
        f"{args.batch_size}, {cores} CPUs) | {first.files} | {first.indexed} | {first.already} | "
        f"{first.setup_seconds:.1f} | {first.seconds:.1f} | {first.images_per_second:.0f} |",
        f"| index_folder, second run (resume) | {again.files} | {again.indexed} | {again.already} | "
        f"{again.setup_seconds:.1f} | {again.seconds:.1f} | "
        f"{again.files / max(again.seconds, 1e-9):.0f} files checked/s |",
        f"| Deep Learning Pipelines (published; InceptionV3 on a Spark cluster) | ~{ANCESTOR_IMAGES} | "
        f"~{ANCESTOR_IMAGES} | - | - | ~{ANCESTOR_SECONDS:.0f} | ~{ancestor:.0f} |",
        "",
        f"First run / ancestor: {first.images_per_second / ancestor:.1f}x the images per second, on one machine "
        f"and with a different model ({first.model_name}, not InceptionV3): the figure compares the pipelines' "
        "throughput, not the models' cost. Seconds run from the first file read to the index refreshed; setup "
        "(service checks, model load, index creation) is apart.",
    ]
    return "\n".join(lines)


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
