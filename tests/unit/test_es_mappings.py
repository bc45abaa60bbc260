"""The images index's vector type: quantized (bbq_hnsw) only for embeddings large enough to keep recall."""

from __future__ import annotations

import pytest

from streamdl.connectors.es_mappings import QUANTIZE_FROM_DIMS, images_index


def vector_type(body: dict) -> str:
    return body["mappings"]["properties"]["embedding"]["index_options"]["type"]


def test_small_embeddings_keep_float_hnsw_and_large_ones_are_quantized():
    assert vector_type(images_index(64)) == "hnsw"  # digits-cnn: bbq_hnsw recall@10 0.861 at 10 candidates
    assert vector_type(images_index(QUANTIZE_FROM_DIMS - 1)) == "hnsw"
    assert vector_type(images_index(QUANTIZE_FROM_DIMS)) == "bbq_hnsw"
    assert vector_type(images_index(1280)) == "bbq_hnsw"  # MobileNetV2: recall@10 0.998-1.000


def test_the_vector_type_can_be_chosen_and_an_unknown_one_is_refused():
    assert vector_type(images_index(1280, index_type="hnsw")) == "hnsw"
    assert vector_type(images_index(64, index_type="int8_hnsw")) == "int8_hnsw"
    with pytest.raises(ValueError, match="index_type must be one of"):
        images_index(64, index_type="flat")
