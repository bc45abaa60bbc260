"""The README's demo: the whole product end to end on the local stack, with a short report."""

from __future__ import annotations

import time
from typing import Callable

from connectors.setup import init_all
from infra.stack import LocalStack, format_status
from streamdl.settings import Settings


def run_demo(settings: Settings, say: Callable[[str], None] = print) -> int:
    """Start the stack, create topics and indices, and show that everything is healthy."""
    t0 = time.monotonic()
    stack = LocalStack(settings, say=say)
    say("== 1/2 local stack")
    for name, what in stack.up().items():
        say(f"{name}: {what}")
    say("== 2/2 topics and indices")
    for kind, name, what in init_all(settings):
        say(f"{kind:<6} {name:<40} {what}")
    print(format_status(stack.status()))
    print(f"demo finished in {time.monotonic() - t0:.1f}s; stop the stack with: .venv/bin/streamdl stack down")
    return 0
