"""``streamdl dlq`` and ``streamdl dlq replay`` against the real Kafka: dead letters listed with their reason,
stage and source, filtered by reason and time, followed live; replayed to their source topic with their
original key, bytes and headers, each dead letter once across runs."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Producer

from streamdl.connectors.kafka_admin import ensure_topics
from streamdl.connectors.kafka_config import kafka_config
from streamdl.records import DeadLetter, InMessage
from streamdl.streams.cli.main import main
from streamdl.streams.jobs.dlq import dead_letters, replay

pytestmark = pytest.mark.integration


@pytest.fixture
def dlq_settings(stack):
    from streamdl.connectors.kafka_admin import admin_client

    prefix = f"tdlq{uuid.uuid4().hex[:8]}."
    settings = stack.model_copy(update={"topic_prefix": prefix, "consumer_group": f"{prefix}g"})
    ensure_topics(settings)
    yield settings
    admin = admin_client(settings)
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        future.result(30)


def send_dead_letters(settings, letters: list[tuple[str, str, bytes, int]], timestamp_ms: int | None = None) -> None:
    """Dead letters as the workers write them (``DeadLetter.to_kafka``): (reason code, key, value, source offset)."""
    producer = Producer(kafka_config(settings))
    for code, key, value, offset in letters:
        original = InMessage(
            key=key.encode(),
            value=value,
            topic=settings.topic("images"),
            partition=2,
            offset=offset,
            headers={"content-type": b"image/png", "source": f"cam/{key}.png".encode()},
        )
        k, v, headers = DeadLetter(original, code, f"{code}: cannot read {key}", "decode").to_kafka()
        producer.produce(settings.topic("dlq"), key=k, value=v, headers=headers, timestamp=timestamp_ms or 0)
    assert producer.flush(30) == 0


def read_all(settings, topic: str) -> list:
    from streamdl.streams.jobs.reading import read_topic

    return list(read_topic(settings, topic))


def test_dlq_lists_reason_stage_and_source_and_filters(dlq_settings, capsys):
    s = dlq_settings
    send_dead_letters(s, [("not_an_image", "old", b"x", 1)], timestamp_ms=int((time.time() - 2 * 86400) * 1000))
    send_dead_letters(s, [("not_an_image", "a", b"aaa", 7), ("corrupt", "b", b"bbb", 8)])
    assert main(["dlq", "--topic-prefix", s.topic_prefix]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3 and "3 dead letters" in captured.err
    (line,) = [line for line in lines if "key=a " in line]  # in order per partition of the dead-letter topic
    assert line.split()[1:3] == ["not_an_image", "decode"] and f"{s.topic('images')}[2]@7" in line
    assert line.endswith("not_an_image: cannot read a")
    assert main(["dlq", "--topic-prefix", s.topic_prefix, "--reason", "corrupt"]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["corrupt"]
    assert main(["dlq", "--topic-prefix", s.topic_prefix, "--since", "1d"]) == 0
    assert sorted(line.split("key=")[1].split()[0] for line in capsys.readouterr().out.splitlines()) == ["a", "b"]


def test_dlq_follow_shows_new_dead_letters(dlq_settings):
    s = dlq_settings
    got, failed, stop, ready = [], [], threading.Event(), threading.Event()

    def follow() -> None:
        try:
            for letter in dead_letters(s, follow=True, stop=stop, ready=ready.set):
                got.append(letter)
                stop.set()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert ready.wait(60) and not failed, failed
    send_dead_letters(s, [("truncated", "new", b"nnn", 3)])
    thread.join(60)
    assert not thread.is_alive() and [(g.reason_code, g.source_offset, g.stage) for g in got] == [
        ("truncated", 3, "decode")
    ]


def test_replay_republishes_the_originals_once(dlq_settings, capsys):
    s = dlq_settings
    send_dead_letters(
        s, [("not_an_image", "a", b"aaa", 7), ("corrupt", "b", b"bbb", 8), ("not_an_image", "c", b"ccc", 9)]
    )
    assert main(["dlq", "replay", "--reason", "not_an_image", "--topic-prefix", s.topic_prefix]) == 0
    assert f"replayed 2 dead letters (2 to {s.topic('images')})" in capsys.readouterr().out
    images = read_all(s, s.topic("images"))
    assert sorted((m.key, m.value) for m in images) == [(b"a", b"aaa"), (b"c", b"ccc")]
    assert all(
        m.headers == {"content-type": b"image/png", "source": f"cam/{m.key.decode()}.png".encode()} for m in images
    )

    again = replay(s, reason="not_an_image")  # nothing twice
    assert sum(again.replayed.values()) == 0 and again.already == 2
    send_dead_letters(s, [("not_an_image", "d", b"ddd", 10)])
    third = replay(s, reason="not_an_image,corrupt")
    assert dict(third.replayed) == {s.topic("images"): 2} and third.already == 2
    assert sorted(m.key for m in read_all(s, s.topic("images"))) == [b"a", b"b", b"c", b"d"]


def test_replay_needs_a_reason(dlq_settings, capsys):
    with pytest.raises(SystemExit):
        main(["dlq", "replay", "--topic-prefix", dlq_settings.topic_prefix])
    assert "--reason" in capsys.readouterr().err
