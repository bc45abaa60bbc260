"""The worker's memory bound in bytes (``Settings.max_inflight_bytes``), turned into the counts that Faust,
aiokafka and the agents understand.

What a worker holds of its input at once, at most: what aiokafka fetched and Faust has not handed on
(``partitions x fetch_bytes``; a fetch returns at least one whole message, so ``max(fetch_bytes,
largest message)`` per partition), each agent's stream buffer (``buffer_messages`` x its largest
message) and each agent's batches in flight (the one being taken, ``batches_ahead`` waiting, one
computing, one indexing, one publishing: ``batch_size`` x its largest message each). With a bound ``B``
they get a quarter, a quarter and a half of it, so the messages held stay under ``B``; without one, the counts are the
defaults and the bound is whatever they add up to (:attr:`InflightLimits.bound`).
"""

from __future__ import annotations

from dataclasses import dataclass

from streamdl.settings import Settings

MiB = 2**20
DEFAULT_FETCH_BYTES = 16 * MiB
MIN_FETCH_BYTES = 64 * 1024


@dataclass(frozen=True)
class InflightLimits:
    fetch_bytes: int
    """aiokafka's ``max_partition_fetch_bytes`` (Faust ``consumer_max_fetch_size``)."""
    buffer_messages: int
    """Faust's ``stream_buffer_maxsize``: messages waiting per agent's stream."""
    batch_size: dict[str, int]
    """Messages per micro-batch, per stream."""
    bound: int
    """Bytes of input messages the worker can hold at once at most, with these counts."""


def largest_message(settings: Settings, stream: str) -> int:
    """The largest message a stream accepts, in bytes."""
    return settings.max_message_bytes if stream == "images" else settings.max_event_bytes


def inflight_limits(settings: Settings, streams: tuple[str, ...]) -> InflightLimits:
    """The counts for ``streams`` (the agents the worker runs) under ``settings.max_inflight_bytes``."""
    in_flight = {  # taking, waiting, then a group each computing (or computed), indexing and publishing
        s: 1 + settings.agent_batches_ahead + 3 * settings.index_batches(s) for s in streams
    }
    budget = settings.max_inflight_bytes
    if budget is None:
        fetch, buffer = DEFAULT_FETCH_BYTES, max(4 * settings.max_batch_size, 256)
        sizes = {s: settings.max_batch_size for s in streams}
    else:
        quarter, share = budget // 4, budget // 4 // len(streams)
        fetch = max(MIN_FETCH_BYTES, quarter // settings.topic_partitions)
        buffer = max(1, min(share // largest_message(settings, s) for s in streams))
        sizes = {
            s: max(1, min(settings.max_batch_size, 2 * share // (in_flight[s] * largest_message(settings, s))))
            for s in streams
        }
    largest = max(largest_message(settings, s) for s in streams)
    bound = settings.topic_partitions * max(fetch, largest) + sum(
        (buffer + in_flight[s] * sizes[s]) * largest_message(settings, s) for s in streams
    )
    return InflightLimits(fetch, buffer, sizes, bound)
