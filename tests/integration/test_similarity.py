"""Similarity search on a real worker's index: neighbour quality, near-duplicate alerts, bad
queries, exact against approximate, and a reindex whose alias switch never breaks search."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer
from PIL import Image
from sklearn.datasets import load_digits

from streamdl.connectors.es_client import ensure_index, es_client
from streamdl.connectors.es_mappings import images_index
from streamdl.connectors.image_producer import iter_digits, publish
from streamdl.connectors.kafka_producer import produce_all
from streamdl.models.digits import digit_id, digit_to_png, digits_model_dir
from streamdl.records import Document
from streamdl.streams.pipelines.neighbours import NeighbourCheck
from streamdl.streams.search import Filters, NotFound, SearchError, SimilaritySearch

pytestmark = pytest.mark.integration

COUNT = 1000  # digits 0..999 are indexed; 1500.. are queries the index never saw


@pytest.fixture(scope="module")
def indexed(stream_factory, tmp_path_factory):
    with stream_factory(
        tmp_path_factory.mktemp("worker") / "worker.log", max_batch_duration_secs=0.3, novelty_min_images=COUNT // 2
    ) as (settings, worker):
        publish(settings, iter_digits(COUNT), total=COUNT, progress=False)
        es = es_client(settings)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            es.indices.refresh(index=settings.alias("images"))
            if es.count(index=settings.alias("images"))["count"] >= COUNT:
                break
            assert worker.alive, worker.tail()
            time.sleep(1)
        yield settings, worker


def test_neighbours_of_indexed_digits_mostly_share_their_label(indexed):
    settings, _ = indexed
    search = SimilaritySearch(settings)
    rng = np.random.default_rng(11)
    labels = load_digits().target
    same = total = 0
    for i in rng.choice(COUNT, 50, replace=False):
        result = search.by_id(digit_id(int(i)), k=10)
        assert digit_id(int(i)) not in [n.image_id for n in result.neighbours]
        assert [n.similarity for n in result.neighbours] == sorted(
            (n.similarity for n in result.neighbours), reverse=True
        )
        same += sum(n.true_label == str(labels[i]) for n in result.neighbours)
        total += len(result.neighbours)
    rate = same / total
    print(f"\nsame-label rate of the 10 nearest neighbours of 50 random digits: {rate:.3f}")
    assert total == 500 and rate > 0.9


def test_query_by_unseen_image_and_filters(indexed):
    settings, _ = indexed
    search = SimilaritySearch(settings)
    digits = load_digits()
    result = search.by_image(digit_to_png(digits.data[1500]), k=10)
    assert result.model_name == "digits-cnn" and len(result.neighbours) == 10
    assert sum(n.label == str(digits.target[1500]) for n in result.neighbours) >= 8
    only_threes = search.by_image(digit_to_png(digits.data[1500]), k=5, filters=Filters(label="3"))
    assert {n.label for n in only_threes.neighbours} == {"3"}
    assert search.by_id(digit_id(3), k=5, filters=Filters(since="1h")).neighbours
    assert not search.by_id(digit_id(3), k=5, filters=Filters(until="2000-01-01")).neighbours
    assert all(n.thumbnail and n.thumbnail[:2] == b"\xff\xd8" for n in result.neighbours)  # JPEG thumbnails


def test_exact_search_agrees_with_approximate(indexed):
    settings, _ = indexed
    search = SimilaritySearch(settings)
    digits = load_digits()
    overlap = []
    for i in (1500, 1600, 1700):
        query = digit_to_png(digits.data[i])
        approx = {n.image_id for n in search.by_image(query, k=10).neighbours}
        exact = search.by_image(query, k=10, exact=True)
        assert exact.exact and len(exact.neighbours) == 10
        overlap.append(len(approx & {n.image_id for n in exact.neighbours}) / 10)
    print(f"\nrecall@10 of approximate against exact on 3 queries: {overlap}")
    assert np.mean(overlap) >= 0.9


def test_bad_queries_get_clear_errors(indexed):
    settings, _ = indexed
    search = SimilaritySearch(settings)
    with pytest.raises(NotFound, match="no image with id"):
        search.by_id("no-such-image")
    with pytest.raises(SearchError, match="k must be between"):
        search.by_id(digit_id(1), k=0)
    with pytest.raises(SearchError, match="num_candidates"):
        search.by_id(digit_id(1), k=10, num_candidates=5)
    with pytest.raises(SearchError, match="unknown filter field 'colour'"):
        Filters.from_mapping({"colour": "red"})
    with pytest.raises(SearchError, match="cannot be used: .*not an image|cannot be used"):
        search.by_image(b"definitely not an image")
    with pytest.raises(NotFound, match="does not exist"):
        SimilaritySearch(settings, alias=f"nothing-{uuid.uuid4().hex[:6]}").by_id("x")


def test_an_index_built_by_another_model_version_is_refused_for_image_queries(indexed, index_factory, es):
    settings, _ = indexed
    alias = index_factory("otherversion")
    ensure_index(
        es,
        alias,
        "v",
        images_index(64, {"model_name": "digits-cnn", "model_version": "999", "model_ref": "digits-cnn"}),
    )
    with pytest.raises(SearchError, match="version 999.*loads version 1"):
        SimilaritySearch(settings, alias=alias).by_image(digit_to_png(load_digits().data[0]))


def _alerts(settings, timeout: float = 20.0) -> list[dict]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"alerts-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topic("alerts")])
    out, end = [], time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append(json.loads(msg.value()))
    finally:
        consumer.close()
    return out


def test_a_republished_copy_raises_exactly_one_near_duplicate_alert(indexed):
    settings, worker = indexed
    original = digit_id(5)
    copy_id = f"copy-of-{original}"
    produce_all(
        settings, settings.topic("images"), [(copy_id, digit_to_png(load_digits().data[5]), [("source", b"copy")])]
    )
    es = es_client(settings)
    deadline = time.monotonic() + 60
    while not es.options(ignore_status=404).get(index=settings.alias("images"), id=copy_id).get("found"):
        assert time.monotonic() < deadline and worker.alive
        time.sleep(0.5)
    alerts = [a for a in _alerts(settings) if a["rule"] == "near_duplicate"]
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert alert["subject_id"] == copy_id and alert["evidence"]["original"] == original
    assert alert["evidence"]["similarity"] >= settings.near_duplicate_threshold
    assert alert["model_name"] == "digits-cnn" and alert["model_version"] == "1"
    es.indices.refresh(index=settings.alias("alerts"))
    stored = es.get(index=settings.alias("alerts"), id=alert["alert_id"])["_source"]
    assert stored["subject_id"] == copy_id and stored["kind"] == "near_duplicate"
    assert worker.metric("streamdl_alerts_total", "rule", stream="images").get("near_duplicate") == 1.0


def test_an_image_whose_message_comes_again_is_not_its_own_neighbour(indexed):
    # a redelivered image is in the index already: its lookup must skip it and still give neighbour_k others
    settings, _ = indexed
    es = es_client(settings)
    every = settings.model_copy(update={"near_duplicate_threshold": -1.0})  # every lookup becomes a finding
    ids = [digit_id(i) for i in (3, 400, 999)]
    alias = settings.alias("images")
    docs = [Document(i, {"embedding": es.get(index=alias, id=i)["_source"]["embedding"]}) for i in ids]
    found = NeighbourCheck(every, es, alias).findings(docs)
    assert sorted(found) == sorted(ids)
    for image_id in ids:
        neighbours = [n["image_id"] for n in found[image_id]["near_duplicate"]["neighbours"]]
        assert image_id not in neighbours and len(set(neighbours)) == settings.neighbour_k, (image_id, neighbours)
        assert found[image_id]["near_duplicate"]["original"] == neighbours[0]


def test_an_image_unlike_any_digit_raises_a_novel_alert_and_digits_mostly_do_not(indexed):
    settings, worker = indexed
    bars = (np.indices((32, 32))[0] % 8 < 4).astype(np.uint8) * 255  # horizontal bars: no digit looks like this
    buf = io.BytesIO()
    Image.fromarray(bars).save(buf, format="PNG")
    produce_all(settings, settings.topic("images"), [("bars", buf.getvalue(), [("source", b"test")])])
    es = es_client(settings)
    deadline = time.monotonic() + 60
    while not es.options(ignore_status=404).get(index=settings.alias("images"), id="bars").get("found"):
        assert time.monotonic() < deadline and worker.alive
        time.sleep(0.5)
    novel = [a for a in _alerts(settings, timeout=10) if a["rule"] == "novel"]
    assert [a["subject_id"] for a in novel if a["subject_id"] == "bars"] == ["bars"]
    evidence = next(a for a in novel if a["subject_id"] == "bars")["evidence"]
    assert (
        evidence["mean_similarity"] < settings.novelty_threshold and len(evidence["neighbours"]) == settings.neighbour_k
    )
    digits_flagged = [a for a in novel if a["subject_id"].startswith("digits-")]
    print(
        f"\ndigits flagged novel after the index held {settings.novelty_min_images}: {len(digits_flagged)} of {COUNT}"
    )
    assert len(digits_flagged) < COUNT * 0.02  # before the warm-up, an almost empty index flagged ~5%


def test_reindex_to_another_model_version_switches_the_alias_without_a_failed_search(indexed, tmp_path):
    from streamdl.streams.jobs.reindex import reindex

    settings, _ = indexed
    model_file = tmp_path / "digits-copy.keras"  # the same network as a file: another model version (its content hash)
    shutil.copy(digits_model_dir(settings.state_dir) / "model.keras", model_file)
    es = es_client(settings)
    alias = settings.alias("images")
    old_index = es.indices.get_alias(name=alias).popitem()[0]
    query = {"field": "embedding", "query_vector": [0.1] * 64, "k": 3, "num_candidates": 20}
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def keep_searching() -> None:
        while not stop.is_set():
            try:
                hits = es.search(index=alias, knn=query, source=False)["hits"]["hits"]
                seen.append(hits[0]["_index"] if hits else "(no hits)")
            except Exception as exc:  # noqa: BLE001 - every failure counts
                failures.append(repr(exc))

    searcher = threading.Thread(target=keep_searching, daemon=True)
    searcher.start()
    try:
        report = reindex(settings, str(model_file), progress=False)
        time.sleep(1)
    finally:
        stop.set()
        searcher.join()
    assert not failures, failures[:3]
    assert report.index != old_index and report.indexed >= COUNT
    assert old_index in seen and report.index in seen and "(no hits)" not in seen
    assert old_index not in seen[seen.index(report.index) :], "after the switch, searches must see only the new index"
    assert list(es.indices.get_alias(name=alias)) == [report.index]
    mapping_meta = es.indices.get_mapping(index=report.index)[report.index]["mappings"]["_meta"]
    assert (
        mapping_meta["model_ref"] == str(model_file.resolve()) and mapping_meta["model_version"] == report.model_version
    )
    # Image queries now use the new index's model (loaded from its file), and still find the right digits.
    result = SimilaritySearch(settings).by_image(digit_to_png(load_digits().data[1500]), k=5)
    assert result.index == report.index and result.model_version == report.model_version
