"""The ``streamdl rules`` command: check an alert rules file without starting a worker."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamdl.alert_rules import DEFAULT_RULES_FILE, load_rules
from streamdl.settings import Settings


def add_rules_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``rules check`` to the subcommands ``sub``; ``common`` holds the settings flags."""
    rules = sub.add_parser("rules", help="check an alert rules file")
    rules_sub = rules.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = rules_sub.add_parser(
        "check",
        parents=[common],
        help="list every error of a rules file at once, or its rules when it is valid",
        description="Read an alert rules file (see docs/alerts.md) as a worker would and print each rule, "
        "or every invalid rule with its line and reason (exit 2). Contacts no service.",
    )
    check.add_argument(
        "file", nargs="?", type=Path, help="the YAML file (default: STREAMDL_ALERT_RULES_FILE, else the shipped rules)"
    )


def cmd_rules(args: argparse.Namespace, settings: Settings) -> int:
    path = args.file or settings.alert_rules_file or DEFAULT_RULES_FILE
    rules = load_rules(path, settings.alert_throttle_secs)  # RulesError (exit 2) lists every bad rule
    for rule in rules:
        streams = ",".join(rule.streams)
        print(f"line {rule.line:<4} {rule.name:<28} {rule.severity:<9} {rule.kind:<24} {streams}")
    print(f"{path}: {len(rules)} rule{'' if len(rules) == 1 else 's'}, valid")
    return 0
