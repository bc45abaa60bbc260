"""The ``streamdl alerts`` and ``streamdl webhook`` commands (wired into :mod:`streamdl.streams.cli.main`)."""

from __future__ import annotations

import argparse
import sys

from streamdl.settings import Settings
from streamdl.streams.jobs.signals import graceful_stop

DEFAULT_SINCE = "1h"


def add_alert_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``alerts`` and ``webhook`` to the subcommands ``sub``; ``common`` holds the settings flags."""
    alerts = sub.add_parser(
        "alerts",
        parents=[common],
        help="print alerts: the recent ones, or follow new ones live",
        description="Print alerts from the alerts topic, one line each, by the time they were raised (the event "
        "time beside it when it differs). Without --follow: the alerts raised "
        f"since --since (default the last {DEFAULT_SINCE}) with their suppressed counts from the alerts index, "
        "then exit. With --follow: new "
        "alerts as they come (after those since --since, when given) until Ctrl-C. "
        "Never commits offsets, so it disturbs no other consumer.",
    )
    alerts.add_argument("-f", "--follow", action="store_true", help="keep printing new alerts until Ctrl-C")
    alerts.add_argument("--rule", help="only alerts of this rule (several: comma-separated)")
    alerts.add_argument(
        "--severity",
        type=str.lower,
        choices=("info", "warning", "critical"),
        help="only alerts at or above this severity (info < warning < critical)",
    )
    alerts.add_argument(
        "--since",
        metavar="TIME",
        help=f"alerts raised since this ISO time (UTC unless it says otherwise) or this long ago: 30m, 2h, 7d "
        f"(default without --follow: {DEFAULT_SINCE}; with --follow: only new alerts)",
    )

    webhook = sub.add_parser(
        "webhook",
        parents=[common],
        help="POST every alert to a webhook until Ctrl-C",
        description="Deliver each alert's JSON to STREAMDL_WEBHOOK_URL, signed with "
        "STREAMDL_WEBHOOK_SECRET (X-Streamdl-Signature), retried on errors; an alert "
        "that still fails goes to the dead-letter topic. At-least-once: receivers "
        "dedupe by X-Streamdl-Alert-Id. Resumes where the last run stopped.",
    )
    webhook.add_argument("--url", help="the webhook URL (overrides STREAMDL_WEBHOOK_URL)")


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.streams.jobs.alert_consumers import follow_alerts

    since = args.since if args.since or args.follow else DEFAULT_SINCE
    try:
        count = follow_alerts(settings, rule=args.rule, severity=args.severity, since=since, follow=args.follow)
    except KeyboardInterrupt:  # the normal end of --follow
        return 0
    if not args.follow:
        print(f"{count} alert{'' if count == 1 else 's'} raised since {since}", file=sys.stderr)
    return 0


def cmd_webhook(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.streams.jobs.alert_consumers import run_webhook

    if args.url:
        settings = settings.model_copy(update={"webhook_url": args.url})
    with graceful_stop() as stop:  # first signal: finish the alert in hand; a second one interrupts
        report = run_webhook(settings, stop=stop)
    print(report.summary())
    return 0
