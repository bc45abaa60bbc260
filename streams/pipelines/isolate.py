"""One model call per micro-batch, and what to do when that call fails."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


def call_isolating(
    items: list[Item],
    call: Callable[[Sequence[Item]], Result],
    concat: Callable[[list[Result]], Result],
    refuse: Callable[[Item, Exception], None],
    what: str = "messages",
) -> Result | None:
    """``call(items)`` once; when it raises, call each item alone so only those that break the
    model are refused (``refuse(item, error)``) and removed from ``items`` in place.

    Returns the result for the items left (in their order), or ``None`` when none is left.
    """
    if not items:
        return None
    try:
        return call(items)
    except Exception:
        logger.exception("model failed on a batch of %d %s; retrying one by one", len(items), what)
    keep, results = [], []
    for item in items:
        try:
            results.append(call([item]))
            keep.append(item)
        except Exception as one:  # noqa: BLE001
            refuse(item, one)
    items[:] = keep
    return concat(results) if results else None
