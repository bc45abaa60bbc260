"""What the fuzz tests share: seeded hypothesis settings with a per-input deadline, and event notes."""

from __future__ import annotations

import os

from hypothesis import currently_in_test_context, event, settings

DEADLINE_MS = 2000
SCALE = float(os.environ.get("STREAMDL_FUZZ_SCALE", "1"))
"""Multiplies every example count (e.g. 20 for a long local run); 1 in CI."""


def fuzz(max_examples: int, deadline: int = DEADLINE_MS):
    """Seeded (same inputs every run, no example database) with a per-input time bound."""
    return settings(max_examples=max(1, int(max_examples * SCALE)), deadline=deadline, derandomize=True, database=None)


def note(what: str) -> None:
    if currently_in_test_context():  # statistics (--hypothesis-show-statistics) when under @given
        event(what)
