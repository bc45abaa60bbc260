"""The ``streamdl dlq`` command: list, follow and replay dead letters (wired into :mod:`streamdl.streams.cli.main`)."""

from __future__ import annotations

import argparse
import sys

from streamdl.settings import Settings


def add_dlq_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``dlq`` and ``dlq replay`` to the subcommands ``sub``; ``common`` holds the settings flags."""
    dlq = sub.add_parser(
        "dlq",
        parents=[common],
        help="show dead letters (bad input and why), or replay them once the cause is fixed",
        description="Print the dead-letter topic, one line per message: when, reason code, stage, where it came "
        "from (topic[partition]@offset), its key, its own place in the dead-letter topic and the reason. "
        "'streamdl dlq replay --reason CODE' re-publishes the original messages to their topics, each once. "
        "Never commits offsets, so it disturbs no other consumer.",
    )
    _filters(dlq)
    dlq.add_argument("-f", "--follow", action="store_true", help="keep printing new dead letters until Ctrl-C")
    dlq_sub = dlq.add_subparsers(dest="action", metavar="ACTION")
    replay = dlq_sub.add_parser(
        "replay",
        parents=[common],
        help="re-publish dead letters with a reason code to their source topics, each once",
        description="Re-publish the original key, bytes and headers of each dead letter with the given reason "
        "code(s) to the topic it came from, in Kafka transactions that also record it as replayed "
        "(compacted topic <prefix>dlq-replayed): a dead letter is never replayed twice. Prints how many went "
        "where. Fix the cause first (a model, a rules file, a mapping), or the messages come back.",
    )
    _filters(replay, reason_required=True)


def _filters(parser: argparse.ArgumentParser, reason_required: bool = False) -> None:
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="dead letters since this ISO time (UTC unless it says otherwise) or this long ago: 30m, 2h, 7d "
        "(default: all the topic holds)",
    )
    parser.add_argument(
        "--reason",
        required=reason_required,
        metavar="CODE",
        help="only this reason code, e.g. not_an_image, corrupt, invalid_json, missing_field "
        "(several: comma-separated)",
    )


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.streams.jobs.dlq import dead_letters, replay

    if args.action == "replay":
        report = replay(settings, reason=args.reason, since=args.since)
        print(report.summary())
        return 0 if sum(report.replayed.values()) or report.already else 1
    shown = 0
    try:
        for letter in dead_letters(settings, since=args.since, reason=args.reason, follow=args.follow):
            print(letter.line(), flush=args.follow)
            shown += 1
    except KeyboardInterrupt:  # the normal end of --follow
        return 0
    print(
        f"{shown} dead letter{'' if shown == 1 else 's'}" + (f" since {args.since}" if args.since else ""),
        file=sys.stderr,
    )
    return 0
