"""A real Elasticsearch: dense_vector with HNSW and cosine, bulk indexing, approximate kNN."""

from __future__ import annotations

import numpy as np
import pytest
from elasticsearch import helpers

from streamdl.connectors.es_client import ensure_index
from streamdl.connectors.es_mappings import images_index

pytestmark = pytest.mark.integration


def test_knn_finds_each_vector_itself(es, index_factory):
    alias = index_factory("knn")
    index = ensure_index(es, alias, "v1", images_index(dims=32))
    mapping = es.indices.get_mapping(index=index)[index]["mappings"]["properties"]["embedding"]
    assert mapping["type"] == "dense_vector" and mapping["similarity"] == "cosine"
    assert mapping["index_options"]["type"] == "hnsw"

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(300, 32)).astype("float32")
    ok, errors = helpers.bulk(
        es,
        (
            {"_index": alias, "_id": f"img-{i}", "image_id": f"img-{i}", "embedding": v.tolist()}
            for i, v in enumerate(vectors)
        ),
        refresh="wait_for",
        raise_on_error=False,
    )
    assert ok == 300 and not errors
    assert es.count(index=alias)["count"] == 300

    for i in (0, 17, 150, 299):
        res = es.search(
            index=alias,
            knn={"field": "embedding", "query_vector": vectors[i].tolist(), "k": 5, "num_candidates": 50},
            source=False,
        )
        hits = res["hits"]["hits"]
        assert hits[0]["_id"] == f"img-{i}"
        assert hits[0]["_score"] == pytest.approx(1.0, abs=1e-4)  # cosine 1 -> score (1 + 1) / 2
        assert len(hits) == 5


def test_ensure_index_is_idempotent_and_moves_the_alias_only_when_asked(es, index_factory):
    alias = index_factory("alias")
    first = ensure_index(es, alias, "v1", images_index(dims=4))
    assert ensure_index(es, alias, "v1", images_index(dims=4)) == first
    second = ensure_index(es, alias, "v2", images_index(dims=8))
    assert set(es.indices.get_alias(name=alias)) == {first}  # a second version does not take the alias by itself
    assert ensure_index(es, alias, "v2", images_index(dims=8), take_alias=True) == second
    assert set(es.indices.get_alias(name=alias)) == {second}
    assert es.indices.exists(index=first)  # the old version stays until someone removes it


def test_bulk_index_hands_back_rejected_documents_and_indexes_the_rest(es, index_factory):
    from streamdl.connectors.es_bulk import bulk_index

    alias = index_factory("bulk")
    ensure_index(es, alias, "v1", images_index(dims=3))
    docs = [(f"d{i}", {"image_id": f"d{i}", "embedding": [1.0, float(i), 0.5]}) for i in range(5)]
    docs.append(("wrong-dims", {"image_id": "wrong-dims", "embedding": [1.0, 2.0]}))
    docs.append(("unknown-field", {"image_id": "unknown-field", "colour": "red"}))  # the mapping is strict
    rejected = bulk_index(es, alias, docs)
    assert {r.doc_id for r in rejected} == {"wrong-dims", "unknown-field"}
    assert all(r.status == 400 and r.reason for r in rejected)
    es.indices.refresh(index=alias)
    assert es.count(index=alias)["count"] == 5


class FailFirstCalls:
    """The real client, except that its first ``n`` bulk calls fail as if the node were unreachable."""

    def __init__(self, client, n: int) -> None:
        self.client, self.left, self.calls = client, n, 0

    def bulk(self, **kwargs):
        from elastic_transport import ConnectionError as TransportConnectionError

        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise TransportConnectionError("injected: connection refused")
        return self.client.bulk(**kwargs)


def test_bulk_index_retries_connection_failures(es, index_factory):
    from streamdl.connectors.es_bulk import bulk_index

    alias = index_factory("retry")
    ensure_index(es, alias, "v1", images_index(dims=3))
    flaky = FailFirstCalls(es, n=2)
    docs = [(f"r{i}", {"image_id": f"r{i}", "embedding": [1.0, float(i), 0.0]}) for i in range(4)]
    assert bulk_index(flaky, alias, docs, max_backoff=0.5) == []
    assert flaky.calls == 3
    es.indices.refresh(index=alias)
    assert es.count(index=alias)["count"] == 4
    with pytest.raises(Exception, match="gave up"):
        bulk_index(FailFirstCalls(es, n=100), alias, docs, max_backoff=0.1, give_up_after=0.5)
