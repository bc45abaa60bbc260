"""The bound in bytes becomes counts whose worst case stays under it; without it the counts are the defaults."""

from __future__ import annotations

from streamdl.settings import load_settings
from streamdl.streams.agents.memory import MiB, inflight_limits


def test_a_bound_in_bytes_sizes_fetch_buffer_and_batches_to_stay_under_it():
    settings = load_settings(
        {"max_inflight_bytes": 256 * MiB, "max_message_bytes": 10 * MiB, "max_batch_size": 64}, env_file=None
    )
    limits = inflight_limits(settings, ("images",))
    assert limits.fetch_bytes == 16 * MiB  # a quarter over 4 partitions
    assert limits.buffer_messages == 6  # a quarter in 10 MiB messages
    assert limits.batch_size == {"images": 2}  # half over 5 batches in flight of 10 MiB messages
    assert limits.bound <= 256 * MiB


def test_two_agents_share_the_bound_and_small_events_keep_their_batch_size():
    settings = load_settings(
        {"max_inflight_bytes": 256 * MiB, "max_message_bytes": 10 * MiB, "max_event_bytes": 4096}, env_file=None
    )
    limits = inflight_limits(settings, ("images", "events"))
    assert limits.batch_size["events"] == settings.max_batch_size and limits.batch_size["images"] == 1
    assert limits.bound <= 256 * MiB


def test_without_a_bound_the_counts_are_the_defaults_and_the_bound_says_what_they_allow():
    settings = load_settings({"max_message_bytes": 10 * MiB, "max_batch_size": 64}, env_file=None)
    limits = inflight_limits(settings, ("images",))
    assert (limits.fetch_bytes, limits.buffer_messages, limits.batch_size) == (16 * MiB, 256, {"images": 64})
    assert limits.bound == (4 * 16 + (256 + 5 * 64) * 10) * MiB  # 5.7 GiB of 10 MiB images


def test_grouped_events_batches_count_as_a_group_each_computing_indexing_and_publishing():
    grouped = load_settings({"max_event_bytes": 4096, "max_batch_size": 64}, env_file=None)
    assert grouped.index_batches("events") == 4 and grouped.index_batches("images") == 1
    limits = inflight_limits(grouped, ("events",))
    assert limits.bound == 4 * 16 * MiB + (256 + (1 + 1 + 3 * 4) * 64) * 4096  # taking, ahead, three groups of 4
    single = load_settings({"max_event_bytes": 4096, "events_index_batches": 1}, env_file=None)
    assert inflight_limits(single, ("events",)).bound == 4 * 16 * MiB + (256 + 5 * 64) * 4096
    exactly_once = load_settings({"processing_guarantee": "exactly_once"}, env_file=None)
    assert exactly_once.index_batches("events") == 1  # a Kafka transaction holds one batch
