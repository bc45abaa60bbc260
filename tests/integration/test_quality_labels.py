"""The label join against the real Elasticsearch: the images alias as the predictions, the quality-labels index
as the keyed state (early labels wait and join later or become orphans; duplicates, contradictions and
replays are counted, not lost; a new LabelJoin, as after a restart, continues from the index)."""

from __future__ import annotations

import pytest

from streamdl.connectors.es_bulk import bulk_index
from streamdl.connectors.es_client import ensure_index
from streamdl.connectors.es_mappings import images_index
from streamdl.records import iso
from streamdl.streams.quality.indices import ensure_quality_indices, labels_alias
from streamdl.streams.quality.labels import Label, LabelJoin
from streamdl.streams.quality.windows import live_quality, orphan_counts

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def prediction(image_id: str, label: str, version: str, at: float) -> tuple[str, dict]:
    body = {"image_id": image_id, "label": label, "score": 0.9, "model_name": "m", "model_version": version}
    return image_id, {**body, "processed_time": iso(at)}


def test_labels_join_wait_orphan_and_count_repeats(stack, es, index_factory):
    prefix = index_factory("quality") + "-"
    settings = stack.model_copy(
        update={"index_prefix": prefix, "quality_pending_ttl_secs": 60, "quality_max_pending": 3}
    )
    ensure_index(es, settings.alias("images"), "v1", images_index(4))
    ensure_quality_indices(es, settings)
    clock = Clock(1_000_000.0)
    bulk_index(
        es, settings.alias("images"), [prediction("a", "1", "1", clock.now), prediction("b", "2", "1", clock.now)]
    )
    es.indices.refresh(index=settings.alias("images"))
    join = LabelJoin(es, settings, clock)

    t = clock.now + 10
    outcomes = join.add(
        [
            Label("e1", "a", "1", t),  # right
            Label("e2", "b", "7", t),  # wrong
            Label("e3", "c", "3", t),  # no prediction yet
            Label("e4", "a", "1", t),  # duplicate, same batch
            Label("e5", "a", "4", t),  # contradiction
        ]
    )
    assert outcomes == {"joined": 2, "pending": 1, "duplicate": 1, "contradiction": 1}
    assert join.add([Label("e5", "a", "4", t + 1)]) == {"replay": 1}  # a replayed batch changes nothing

    bulk_index(es, settings.alias("images"), [prediction("c", "3", "2", clock.now + 20)])
    es.indices.refresh(index=f"{settings.alias('images')},{labels_alias(settings)}")
    restarted = LabelJoin(es, settings, clock)  # the state is the index: a new worker continues from it
    assert restarted.retry() == {"joined": 1, "orphan": 0}

    for i in range(4):  # labels for images that never come: three wait, the fourth finds the wait list full
        restarted.add([Label(f"x{i}", f"missing-{i}", "0", t)])
    es.indices.refresh(index=labels_alias(settings))
    clock.now += 120
    assert restarted.retry() == {"joined": 0, "orphan": 3}  # past the TTL
    es.indices.refresh(index=labels_alias(settings))

    reports = {r.model_version: r for r in live_quality(es, labels_alias(settings), "all", None, clock.now)}
    assert (reports["1"].labelled, reports["1"].correct, reports["2"].labelled) == (2, 1, 1)
    assert (reports["1"].duplicates, reports["1"].contradictions) == (1, 1)
    assert reports["1"].recall == {"1": 1.0, "7": 0.0} and reports["1"].precision == {"1": 1.0, "2": 0.0}
    assert orphan_counts(es, labels_alias(settings), clock.now - 3600) == {
        "no_prediction": 3,
        "pending_full": 1,
        "pending": 0,
    }
