"""The Elasticsearch client's JSON: orjson for requests and answers, JSON and NDJSON, compatibility mode too."""

from __future__ import annotations

import datetime
import decimal

import numpy as np
import pytest

from streamdl.connectors.es_client import es_client
from streamdl.settings import load_settings


@pytest.fixture(scope="module")
def serializers():
    return es_client(load_settings({"es_url": "http://127.0.0.1:1"}, env_file=None)).transport.serializers


@pytest.mark.parametrize("mimetype", ["application/x-ndjson", "application/vnd.elasticsearch+x-ndjson"])
def test_multi_search_bodies_write_numpy_vectors_and_read_answers(serializers, mimetype):
    # a float32 vector in its shortest form (0.1, not 0.10000000149011612): what Elasticsearch reads back is the same
    ndjson = serializers.get_serializer(mimetype)
    body = [{"index": "images"}, {"knn": {"query_vector": np.array([0.1, 0.25], np.float32), "k": 6}, "size": 6}]
    assert ndjson.dumps(body) == b'{"index":"images"}\n{"knn":{"query_vector":[0.1,0.25],"k":6},"size":6}\n'
    assert ndjson.dumps(b'{"index":"images"}') == b'{"index":"images"}\n'  # encoded already: sent as it is
    assert ndjson.loads(b'{"a":1}\n{"b":[1.5]}\n') == [{"a": 1}, {"b": [1.5]}]


@pytest.mark.parametrize("mimetype", ["application/json", "application/vnd.elasticsearch+json"])
def test_json_bodies_keep_what_the_standard_serializer_wrote(serializers, mimetype):
    json = serializers.get_serializer(mimetype)
    when = datetime.datetime(2026, 12, 2, 1, 2, 3, tzinfo=datetime.UTC)
    body = {"ts": when, "n": decimal.Decimal("1.5"), "v": np.float32(0.5), "ids": ("a", "b"), "by": {3: "x"}}
    assert json.loads(json.dumps(body)) == {
        "ts": "2026-12-02T01:02:03+00:00",
        "n": 1.5,
        "v": 0.5,
        "ids": ["a", "b"],
        "by": {"3": "x"},  # a key that is not text is written as text, as json.dumps does
    }
