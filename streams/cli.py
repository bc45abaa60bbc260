"""The ``streamdl`` command line.

Every subcommand accepts the common settings flags (``--bootstrap-servers``, ``--es-url``, ...);
a flag beats its ``STREAMDL_*`` environment variable, which beats ``.env``, which beats the default.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from streamdl import __version__
from streamdl.errors import StreamdlError
from streamdl.settings import Settings, load_settings

# flag -> settings field; values given on the command line override everything else
SETTING_FLAGS: dict[str, tuple[str, type, str]] = {
    "--bootstrap-servers": ("kafka_bootstrap_servers", str, "Kafka bootstrap servers, host:port[,...]"),
    "--es-url": ("es_url", str, "Elasticsearch URL"),
    "--topic-prefix": ("topic_prefix", str, "prefix of every topic name"),
    "--index-prefix": ("index_prefix", str, "prefix of every Elasticsearch alias"),
    "--state-dir": ("state_dir", Path, "folder for the local stack, model cache and logs"),
    "--batch-size": ("max_batch_size", str, "most messages in one micro-batch"),
    "--batch-linger": ("max_batch_duration_secs", str, "longest wait to fill a micro-batch, seconds"),
    "--model": ("model_name", str, "model the workers serve"),
    "--metrics-port": ("metrics_port", str, "port of the worker's Prometheus endpoint (0 = off)"),
    "--log-level": ("log_level", str, "DEBUG, INFO, WARNING or ERROR"),
}


def _common_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings (flags override STREAMDL_* variables and .env)")
    group.add_argument("--env-file", type=Path, default=argparse.SUPPRESS, help="read settings from this file (default: ./.env)")
    for flag, (field, kind, text) in SETTING_FLAGS.items():
        group.add_argument(flag, dest=field, type=kind, default=argparse.SUPPRESS, metavar=field.upper(),
                           help=f"{text} [STREAMDL_{field.upper()}]")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_flags()
    parser = argparse.ArgumentParser(
        prog="streamdl",
        description="Real-time deep learning over Kafka: featurize and classify image and event streams, "
                    "index embeddings into Elasticsearch, publish predictions and alerts.",
        epilog="Start here: 'streamdl stack up' then 'streamdl init'. Run 'streamdl COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"streamdl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    stack = sub.add_parser("stack", help="run the local Kafka + Elasticsearch stack (no Docker needed)",
                           description="Fetch Kafka and Elasticsearch from Maven Central (once) and run them on 127.0.0.1.")
    stack_sub = stack.add_subparsers(dest="action", metavar="ACTION", required=True)
    stack_sub.add_parser("up", parents=[common], help="start both services and wait until healthy (idempotent)")
    stack_sub.add_parser("down", parents=[common], help="stop both services and wait")
    stack_sub.add_parser("status", parents=[common], help="show what runs where, with memory")
    logs = stack_sub.add_parser("logs", parents=[common], help="print the last lines of a service's log")
    logs.add_argument("service", nargs="?", choices=("kafka", "elasticsearch"), help="one service (default: both)")
    logs.add_argument("-n", "--lines", type=int, default=40, help="how many lines (default 40)")

    sub.add_parser("init", parents=[common], help="create the topics and Elasticsearch indices (idempotent)")
    sub.add_parser("worker", parents=[common], help="run a stream worker (images agent) until SIGINT/SIGTERM",
                   description="Consume the images topic in micro-batches, featurize and classify, index into "
                               "Elasticsearch, publish predictions; bad input goes to the dead-letter topic.")

    produce = sub.add_parser("produce", help="publish images (or events) to Kafka")
    produce_sub = produce.add_subparsers(dest="kind", metavar="KIND", required=True)
    images = produce_sub.add_parser("images", parents=[common], help="publish image files, folders, or a sample",
                                    description="Publish each image's raw bytes; key = content hash, headers = "
                                                "content-type, source, label.")
    images.add_argument("paths", nargs="*", type=Path, help="image files or folders (walked recursively)")
    images.add_argument("--sample", choices=("digits",), help="publish a sample the project makes: scikit-learn's 1,797 digits")
    images.add_argument("--limit", type=int, help="publish at most N images")
    images.add_argument("--rate", type=float, help="images per second (default: as fast as possible)")
    images.add_argument("--label", help="label header for every image published from PATHS")
    sub.add_parser("settings", parents=[common], help="print the effective settings (secrets masked)")
    sub.add_parser("demo", parents=[common], help="the end-to-end demo: stack up, init, run the pipeline, report")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Load the settings with the flags given in ``args`` as the highest-priority overrides."""
    overrides = {field: getattr(args, field) for field, _, _ in SETTING_FLAGS.values() if hasattr(args, field)}
    return load_settings(overrides, env_file=getattr(args, "env_file", ".env"))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from infra.stack import LocalStack, format_status

    stack = LocalStack(settings, say=_say)
    if args.action == "up":
        for name, what in stack.up().items():
            print(f"{name}: {what}")
        print(format_status(stack.status()))
    elif args.action == "down":
        for name, what in stack.down().items():
            print(f"{name}: {what}")
    elif args.action == "status":
        rows = stack.status()
        print(format_status(rows))
        return 0 if all(r.state.startswith("running") for r in rows) else 3
    elif args.action == "logs":
        for svc in [stack.service(args.service)] if args.service else stack.services:
            print(f"==> {svc.log} <==")
            print(svc.log_tail(args.lines))
    return 0


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from connectors.setup import init_all

    for kind, name, what in init_all(settings):
        print(f"{kind:<6} {name:<40} {what}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.worker import run_worker

    return run_worker(settings)


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace
    from itertools import islice

    from connectors.image_producer import ImageItem, iter_digits, iter_files, publish

    if bool(args.paths) == bool(args.sample):
        raise StreamdlError("give image PATHS or --sample digits (one of the two)")
    if args.sample:
        items, total = iter_digits(args.limit), args.limit or 1797
    else:
        items = iter_files(args.paths, settings.max_message_bytes)
        if args.label is not None:
            items = (replace(i, label=args.label) if isinstance(i, ImageItem) else i for i in items)
        items, total = islice(items, args.limit) if args.limit else items, args.limit
    report = publish(settings, items, rate=args.rate, total=total, progress=sys.stderr.isatty())
    print(report.summary())
    return 0 if report.sent or not report.skipped else 1


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    for key, value in settings.masked().items():
        print(f"{key:<28} {value}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo import run_demo

    return run_demo(settings, say=_say)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "stack": cmd_stack, "init": cmd_init, "worker": cmd_worker, "produce": cmd_produce,
    "settings": cmd_settings, "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamdl`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        logging.getLogger("elastic_transport").setLevel(max(logging.WARNING, logging.getLogger().level))
        return COMMANDS[args.command](args, settings)
    except StreamdlError as exc:
        print(f"streamdl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamdl: interrupted", file=sys.stderr)
        return 130

