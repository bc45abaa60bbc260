"""The ``streamdl archive`` commands: run the archiver, show what is archived, compact small files
(wired into :mod:`streamdl.streams.cli.main`)."""

from __future__ import annotations

import argparse
import sys

from streamdl.settings import Settings


def add_archive_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``archive run|status|compact`` to the subcommands ``sub``; ``common`` holds the settings flags."""
    archive = sub.add_parser(
        "archive",
        help="the Parquet archive of the images and events topics",
        description="Parquet files per topic and hour under STREAMDL_ARCHIVE_URL (a folder or an "
        "fsspec URL; default <state dir>/archive). See docs/archive.md.",
    )
    actions = archive.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "run",
        parents=[common],
        help="archive STREAMDL_ARCHIVE_TOPICS until SIGINT/SIGTERM",
        description="Consume the archived topics in their own consumer group (<group>-archiver) and "
        "write Parquet files; offsets are committed only once a file is durable, and a "
        "restart resumes after the highest archived offset (each message archived once). "
        "Files close after STREAMDL_ARCHIVE_MAX_FILE_MESSAGES messages or "
        "STREAMDL_ARCHIVE_MAX_FILE_SECS seconds.",
    )
    status = actions.add_parser("status", parents=[common], help="files, rows, size, hours and last offsets per topic")
    status.add_argument(
        "--topic", action="append", help="only this topic (full name; repeatable; default: every topic in the archive)"
    )
    compact = actions.add_parser(
        "compact",
        parents=[common],
        help="merge the small files of closed hours",
        description="Merge each partition's small files of hours that ended at least "
        "--older-than-hours ago into bigger files (written whole before the "
        "small ones are deleted). Safe while the archiver runs.",
    )
    compact.add_argument(
        "--topic",
        action="append",
        help="only this topic (full name; repeatable; default: the archived topics, STREAMDL_ARCHIVE_TOPICS)",
    )
    compact.add_argument(
        "--older-than-hours",
        type=float,
        default=1.0,
        help="only hours that ended at least this long ago (default 1; 0 = every past hour)",
    )
    compact.add_argument(
        "--target-rows", type=int, default=1_000_000, help="most rows in a merged file (default 1000000)"
    )
    compact.add_argument("--target-mib", type=int, default=256, help="most MiB in a merged file (default 256)")


def cmd_archive(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.connectors.archive import archive_root, archive_topics

    root = archive_root(settings)
    if args.action == "run":
        from streamdl.streams.jobs.archiver import run_archiver

        return run_archiver(settings)
    if args.action == "status":
        from streamdl.connectors.archive_reader import archive_status, format_status

        rows = archive_status(root, args.topic)
        if not rows:
            print(f"nothing archived yet in {root}")
            return 0
        print(f"archive {root}")
        print(format_status(rows))
        return 0
    from streamdl.connectors.archive_reader import compact

    corrupt = 0
    for topic in args.topic or archive_topics(settings):
        report = compact(
            root,
            topic,
            older_than_hours=args.older_than_hours,
            target_rows=args.target_rows,
            target_bytes=args.target_mib * 1024 * 1024,
        )
        corrupt += report.corrupt
        print(f"{topic}: {report.summary()}")
    if corrupt:
        print(
            f"{corrupt} corrupt files were left in place; the reader skips them (see the warnings above)",
            file=sys.stderr,
        )
    return 0
