"""The ``streamdl`` command line.

Every subcommand accepts the common settings flags (``--bootstrap-servers``, ``--es-url``, ...);
a flag beats its ``STREAMDL_*`` environment variable, which beats ``.env``, which beats the default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from streamdl import __version__
from streamdl.errors import StreamdlError
from streamdl.settings import Settings, load_settings
from streamdl.streams.cli.alerts import add_alert_parsers, cmd_alerts, cmd_webhook
from streamdl.streams.cli.archive import add_archive_parsers, cmd_archive
from streamdl.streams.cli.console import EXIT_CODES, configure_logging, exit_code, format_table, in_user_terms
from streamdl.streams.cli.dlq import add_dlq_parsers, cmd_dlq
from streamdl.streams.cli.models import add_model_parsers, cmd_models, cmd_retrain
from streamdl.streams.cli.rules import add_rules_parsers, cmd_rules

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
    "--archive-metrics-port": ("archive_metrics_port", str, "port of the archiver's Prometheus endpoint (0 = off)"),
    "--metrics-host": ("metrics_host", str, "address the Prometheus endpoints listen on (0.0.0.0 = all)"),
    "--log-level": ("log_level", str, "DEBUG, INFO, WARNING or ERROR"),
}


FLAGS_OF: dict[str, tuple[str, ...]] = {
    "stack": ("--bootstrap-servers", "--es-url", "--state-dir"),
    "produce": ("--bootstrap-servers", "--topic-prefix"),
    "similar": ("--es-url", "--index-prefix", "--state-dir", "--model"),
    "dlq": ("--bootstrap-servers", "--topic-prefix"),
    "rules": (),
}
"""The settings flags of the commands that read only a few settings (with ``--env-file`` and ``--log-level``);
every other command takes them all."""


def _common_flags(only: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """A parent parser with the settings flags: all of them, or ``only`` these and ``--log-level``."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings (flags override STREAMDL_* variables and .env)")
    group.add_argument(
        "--env-file", type=Path, default=argparse.SUPPRESS, help="read settings from this file (default: ./.env)"
    )
    for flag, (field, kind, text) in SETTING_FLAGS.items():
        if only is not None and flag not in (*only, "--log-level"):
            continue
        group.add_argument(
            flag,
            dest=field,
            type=kind,
            default=argparse.SUPPRESS,
            metavar=field.upper(),
            help=f"{text} [STREAMDL_{field.upper()}]",
        )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_flags()
    flags_of = {command: _common_flags(only) for command, only in FLAGS_OF.items()}
    parser = argparse.ArgumentParser(
        prog="streamdl",
        description="Real-time deep learning over Kafka: featurize and classify image and event streams, "
        "index embeddings into Elasticsearch, publish predictions and alerts.",
        epilog="Start here: 'streamdl stack up' then 'streamdl init'. "
        "Run 'streamdl COMMAND --help' for a command's options. Exit codes: "
        + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items())
        + ".",
    )
    parser.add_argument("--version", action="version", version=f"streamdl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    stack = sub.add_parser(
        "stack",
        help="run the local Kafka + Elasticsearch stack (no Docker needed)",
        description="Fetch Kafka and Elasticsearch from Maven Central (once) and run them on 127.0.0.1.",
    )
    stack_sub = stack.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = stack_sub.add_parser(
        "up", parents=[flags_of["stack"]], help="start both services and wait until healthy (idempotent)"
    )
    up.add_argument(
        "--with",
        dest="with_services",
        action="append",
        default=[],
        choices=["prism"],
        help="also run an optional service: 'prism' = a portable Beam job server on 127.0.0.1:STREAMDL_JOB_SERVER_PORT "
        "(docs/beam-runners.md)",
    )
    stack_sub.add_parser("down", parents=[flags_of["stack"]], help="stop both services and wait")
    stack_sub.add_parser("status", parents=[flags_of["stack"]], help="show what runs where, with memory")
    logs = stack_sub.add_parser("logs", parents=[flags_of["stack"]], help="print the last lines of a service's log")
    logs.add_argument("service", nargs="?", choices=("kafka", "elasticsearch"), help="one service (default: both)")
    logs.add_argument("-n", "--lines", type=int, default=40, help="how many lines (default 40)")

    sub.add_parser("init", parents=[common], help="create the topics and Elasticsearch indices (idempotent)")
    sub.add_parser(
        "worker",
        parents=[common],
        help="run a stream worker (images and events agents) until SIGINT/SIGTERM",
        description="Consume the images and events topics in micro-batches (STREAMDL_WORKER_AGENTS), "
        "featurize, classify and score, index into Elasticsearch, apply the alert rules, publish "
        "predictions and alerts; bad input goes to the dead-letter topic.",
    )

    similar = sub.add_parser(
        "similar",
        parents=[flags_of["similar"]],
        help="find indexed images similar to an image or an indexed id",
        description="kNN over the embeddings in Elasticsearch, with the model that built the index.",
    )
    similar.add_argument("image", nargs="?", type=Path, help="an image file to query with")
    similar.add_argument("--id", dest="image_id", help="query with an indexed image (itself excluded)")
    similar.add_argument("--k", type=int, default=10, help="how many neighbours (default 10)")
    similar.add_argument("--num-candidates", type=int, help="HNSW candidates per shard (default max(100, 10k))")
    similar.add_argument("--label", help="only neighbours with this label")
    similar.add_argument(
        "--source", help="only neighbours from this source: a file path, or a folder (everything under it)"
    )
    similar.add_argument(
        "--since", help="only neighbours processed since: ISO time, date math (now-1h) or a duration (30m, 2h, 7d)"
    )
    similar.add_argument(
        "--exact", action="store_true", help="exact search (a full scan) instead of HNSW, to check recall"
    )
    similar.add_argument("--png", type=Path, help="also write a contact sheet: the query and its neighbours")

    index = sub.add_parser("index", help="the Elasticsearch indices: status, reindex for another model")
    index_sub = index.add_subparsers(dest="action", metavar="ACTION", required=True)
    index_sub.add_parser("status", parents=[common], help="indices, aliases, document counts, the model of each")
    reindex = index_sub.add_parser(
        "reindex",
        parents=[common],
        help="rebuild the images index with another model, then switch the alias",
        description="Replays the images topic from the start through the model given by --model "
        "(or STREAMDL_MODEL_NAME) into its own index, then moves the images alias to it "
        "atomically. Then restart the workers with the same model.",
    )
    reindex.add_argument("--no-switch", action="store_true", help="build the index but leave the alias where it is")
    folder = index_sub.add_parser(
        "folder",
        parents=[common],
        help="featurize a folder of images straight into the images index (resumable)",
        description="Every image file under PATH (a folder, a file or a glob) goes through the worker's "
        "image pipeline into the images index of --model (or STREAMDL_MODEL_NAME), with the documents the "
        "worker writes; ids already indexed are skipped, so a second run resumes. Prints a final report.",
    )
    folder.add_argument("path", type=Path, help="a folder, an image file or a glob")

    produce = sub.add_parser("produce", help="publish images (or events) to Kafka")
    produce_sub = produce.add_subparsers(dest="kind", metavar="KIND", required=True)
    images = produce_sub.add_parser(
        "images",
        parents=[flags_of["produce"]],
        help="publish image files, folders, or a sample",
        description="Publish each image's raw bytes; key = content hash, headers = content-type, source, label.",
    )
    images.add_argument("paths", nargs="*", type=Path, help="image files or folders (walked recursively)")
    images.add_argument(
        "--sample", choices=("digits",), help="publish a sample the project makes: scikit-learn's 1,797 digits"
    )
    images.add_argument("--limit", type=int, help="publish at most N images")
    images.add_argument("--rate", type=float, help="images per second (default: as fast as possible)")
    images.add_argument("--label", help="label header for every image published from PATHS")
    events = produce_sub.add_parser(
        "events",
        parents=[flags_of["produce"]],
        help="publish events from a JSON Lines file, or a sample",
        description="Publish each event (one JSON object per line, see docs/events.md) with "
        "key = its id; lines that are not valid events are skipped with the reason.",
    )
    events.add_argument("file", nargs="?", type=Path, help="a JSON Lines file of events")
    events.add_argument(
        "--sample",
        choices=("sensors",),
        help="publish a sample the project makes: a sensor feed of several machines with injected anomalies",
    )
    events.add_argument("--limit", type=int, help="publish at most N events")
    events.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")

    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="kind", metavar="KIND", required=True)
    train_events = train_sub.add_parser(
        "events",
        parents=[common],
        help="train an event model (autoencoder or classifier)",
        description="Train a Keras autoencoder (anomaly score) or MLP classifier on events "
        "and register it as the next version of NAME under the state folder. "
        "The feature preprocessing is fitted on the training events and saved with it.",
    )
    train_events.add_argument("file", nargs="?", type=Path, help="a JSON Lines file of events")
    train_events.add_argument("--sample", choices=("sensors",), help="train on the sensor sample (its first two days)")
    train_events.add_argument(
        "--kind",
        dest="model_kind",
        choices=("autoencoder", "classifier"),
        default="autoencoder",
        help="autoencoder (default; unlabelled events) or classifier (events with a 'label')",
    )
    train_events.add_argument(
        "--name", help="registered name (default: sensors-ae for the sample, else the file's stem)"
    )
    train_events.add_argument("--epochs", type=int, help="training epochs (default: the model's own)")
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="serve the similar-images web page and JSON API",
        description="A web page and JSON API (/api/similar, /api/index) over the images index.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8088, help="port to listen on (default 8088)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="listen on a non-loopback --host without a token (STREAMDL_WEB_TOKEN_FILE); anyone who reaches "
        "the port can search",
    )
    add_alert_parsers(sub, common)
    add_archive_parsers(sub, common)
    add_model_parsers(sub, common)
    add_dlq_parsers(sub, flags_of["dlq"])
    sub.add_parser("settings", parents=[common], help="print the effective settings (secrets masked)")
    sub.add_parser("demo", parents=[common], help="the end-to-end demo: stack up, init, run the pipeline, report")
    add_rules_parsers(sub, flags_of["rules"])
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Load the settings with the flags given in ``args`` as the highest-priority overrides."""
    overrides = {field: getattr(args, field) for field, _, _ in SETTING_FLAGS.values() if hasattr(args, field)}
    return load_settings(overrides, env_file=getattr(args, "env_file", ".env"), flags=given_flags(args))


def given_flags(args: argparse.Namespace) -> dict[str, str]:
    """The settings given as flags on this command line: field -> flag."""
    return {field: flag for flag, (field, _, _) in SETTING_FLAGS.items() if hasattr(args, field)}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.infra.stack import LocalStack, format_status

    stack = LocalStack(settings, say=_say, extra=getattr(args, "with_services", ()))
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
    from streamdl.connectors.setup import init_all

    for kind, name, what in init_all(settings):
        print(f"{kind:<6} {name:<40} {what}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.streams.agents.worker import run_worker

    return run_worker(settings)


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    if args.kind == "events":
        return _produce_events(args, settings)
    from dataclasses import replace
    from itertools import islice

    from streamdl.connectors.image_producer import ImageItem, iter_digits, iter_files, publish

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


def _produce_events(args: argparse.Namespace, settings: Settings) -> int:
    from itertools import islice

    from streamdl.connectors.event_producer import iter_jsonl, iter_sensors, publish_events

    if bool(args.file) == bool(args.sample):
        raise StreamdlError("give a JSON Lines FILE or --sample sensors (one of the two)")
    if args.sample:
        items = iter_sensors(args.limit)
    else:
        items = iter_jsonl(
            args.file, max_bytes=settings.max_event_bytes, max_future_secs=settings.max_event_future_secs
        )
        items = islice(items, args.limit) if args.limit else items
    report = publish_events(settings, items, rate=args.rate, total=args.limit, progress=sys.stderr.isatty())
    print(report.summary())
    return 0 if report.sent or not report.skipped else 1


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.streams.jobs.event_training import train_events

    info = train_events(
        settings, file=args.file, sample=args.sample, kind=args.model_kind, name=args.name, epochs=args.epochs, say=_say
    )
    print(f"registered {info['name']} version {info['version']} ({info['kind']}) in {info['path']}")
    print(f"use it: STREAMDL_EVENT_MODEL={info['name']}:{info['version']} streamdl worker")
    return 0


def cmd_similar(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.connectors.es_client import check_elasticsearch
    from streamdl.streams.api.search import run_query
    from streamdl.streams.search import Filters, SimilaritySearch

    if bool(args.image) == bool(args.image_id):
        raise StreamdlError("give an IMAGE file or --id ID (one of the two)")
    search = SimilaritySearch(settings, model=getattr(args, "model_name", None))  # --model: that model's index
    check_elasticsearch(search.es, settings)  # one line and exit 3 within connect_timeout_secs when it is down
    filters = Filters(label=args.label, source=args.source, since=args.since)
    query = run_query(  # the Python API's query: an image file is featurized, an id looked up
        search, args.image_id or args.image, k=args.k, num_candidates=args.num_candidates, filters=filters,
        exact=args.exact,
    )  # fmt: skip
    result = query.result
    print(
        f"{'exact' if result.exact else 'approximate'} kNN in {result.index} "
        f"({result.model_name} v{result.model_version}), {result.took_ms:.0f} ms"
    )
    rows = [
        [str(rank), f"{n.similarity:.4f}", n.label or "-", n.true_label or "-", n.source or "-", n.image_id]
        for rank, n in enumerate(result.neighbours, 1)
    ]
    print(format_table(["rank", "similarity", "label", "true", "source", "id"], rows, right=(0, 1)))
    if args.png:
        from streamdl.streams.web.contact_sheet import contact_sheet

        args.png.write_bytes(contact_sheet(result, query.image, query.caption))
        print(f"contact sheet: {args.png}")
    return 0 if result.neighbours else 1


def cmd_index(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "status":
        from streamdl.connectors.es_client import check_elasticsearch, es_client
        from streamdl.connectors.index_status import format_index_status, index_status

        es = es_client(settings)
        check_elasticsearch(es, settings)
        print(format_index_status(index_status(settings, es)))
        return 0
    if args.action == "folder":
        from streamdl.streams.api.index_folder import index_folder

        done = index_folder(args.path, progress=sys.stderr.isatty(), settings=settings)
        print(done.summary())
        return 0 if done.indexed or done.already else 1
    from streamdl.streams.jobs.reindex import reindex

    report = reindex(settings, settings.model_name, switch=not args.no_switch, progress=sys.stderr.isatty())
    print(report.summary())
    return 0


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    for key, value in settings.masked().items():
        print(f"{key:<28} {value}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.streams.web.server import serve

    return serve(settings, args.host, args.port, insecure=args.insecure)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.streams.jobs.demo import run_demo

    return run_demo(settings, say=_say)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "stack": cmd_stack,
    "init": cmd_init,
    "worker": cmd_worker,
    "produce": cmd_produce,
    "similar": cmd_similar,
    "index": cmd_index,
    "settings": cmd_settings,
    "demo": cmd_demo,
    "serve": cmd_serve,
    "train": cmd_train,
    "alerts": cmd_alerts,
    "webhook": cmd_webhook,
    "archive": cmd_archive,
    "retrain": cmd_retrain,
    "models": cmd_models,
    "rules": cmd_rules,
    "dlq": cmd_dlq,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamdl`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        configure_logging(settings.log_level)
        return COMMANDS[args.command](args, settings)
    except StreamdlError as exc:
        print(f"streamdl: error: {in_user_terms(str(exc), given_flags(args))}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("streamdl: interrupted", file=sys.stderr)
        return 130
