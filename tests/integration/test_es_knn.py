"""A real Elasticsearch: dense_vector with HNSW and cosine, bulk indexing, approximate kNN."""

from __future__ import annotations

import numpy as np
import pytest
from elasticsearch import helpers

from connectors.es_client import ensure_index
from connectors.es_mappings import images_index

pytestmark = pytest.mark.integration


def test_knn_finds_each_vector_itself(es, index_factory):
    alias = index_factory("knn")
    index = ensure_index(es, alias, "v1", images_index(dims=32))
    mapping = es.indices.get_mapping(index=index)[index]["mappings"]["properties"]["embedding"]
    assert mapping["type"] == "dense_vector" and mapping["similarity"] == "cosine"
    assert mapping["index_options"]["type"] == "hnsw"

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(300, 32)).astype("float32")
    ok, errors = helpers.bulk(es, ({"_index": alias, "_id": f"img-{i}", "image_id": f"img-{i}", "embedding": v.tolist()}
                                   for i, v in enumerate(vectors)), refresh="wait_for", raise_on_error=False)
    assert ok == 300 and not errors
    assert es.count(index=alias)["count"] == 300

    for i in (0, 17, 150, 299):
        res = es.search(index=alias, knn={"field": "embedding", "query_vector": vectors[i].tolist(), "k": 5, "num_candidates": 50},
                        source=False)
        hits = res["hits"]["hits"]
        assert hits[0]["_id"] == f"img-{i}"
        assert hits[0]["_score"] == pytest.approx(1.0, abs=1e-4)  # cosine 1 -> score (1 + 1) / 2
        assert len(hits) == 5


def test_ensure_index_is_idempotent_and_moves_the_alias(es, index_factory):
    alias = index_factory("alias")
    first = ensure_index(es, alias, "v1", images_index(dims=4))
    assert ensure_index(es, alias, "v1", images_index(dims=4)) == first
    second = ensure_index(es, alias, "v2", images_index(dims=8))
    assert set(es.indices.get_alias(name=alias)) == {second}
    assert es.indices.exists(index=first)  # the old version stays until someone removes it
