"""``streamdl similar`` against a real Elasticsearch index: ``--model`` picks the index that model built or
is refused with the models that have one; ``--source`` matches a folder; the table shows the source."""

from __future__ import annotations

import pytest

from streamdl.connectors.es_client import ensure_index
from streamdl.connectors.es_mappings import images_index
from streamdl.streams.cli.main import main

pytestmark = pytest.mark.integration

DOCS = {
    "q": ([1.0, 0.0, 0.0, 0.0], "photos/q.jpg"),
    "near": ([0.9, 0.1, 0.0, 0.0], "photos/cats/near.jpg"),
    "mid": ([0.5, 0.5, 0.0, 0.0], "photos2/mid.jpg"),
    "far": ([0.0, 0.0, 1.0, 0.0], "elsewhere/far-away-with-a-long-name.png"),
}


@pytest.fixture
def prefix(es, index_factory):
    prefix = index_factory("simcli") + "-"
    alias = f"{prefix}images"
    for version, model in (("digits-cnn-1", "digits-cnn"), ("other-net-1", "other-net")):
        index = ensure_index(
            es, alias, version, images_index(4, {"model_name": model, "model_version": "1", "model_ref": model})
        )
        for image_id, (vector, source) in DOCS.items():
            es.index(
                index=index,
                id=image_id,
                document={"image_id": image_id, "embedding": vector, "source": source, "label": model[:5]},
            )
        es.indices.refresh(index=index)
    return prefix


def similar(prefix: str, *argv: str) -> list[str]:
    return ["similar", "--id", "q", "--index-prefix", prefix, "--exact", *argv]


def test_the_table_shows_the_source_in_its_own_column(prefix, capsys):
    assert main(similar(prefix)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["rank", "similarity", "label", "true", "source", "id"]
    rows = [line.split() for line in out[2:]]
    assert [r[-2:] for r in rows] == [
        ["photos/cats/near.jpg", "near"],
        ["photos2/mid.jpg", "mid"],
        ["elsewhere/far-away-with-a-long-name.png", "far"],
    ]


def test_source_matches_a_folder_and_the_exact_path(prefix, capsys):
    assert main(similar(prefix, "--source", "photos")) == 0
    assert [line.split()[-1] for line in capsys.readouterr().out.splitlines()[2:]] == ["near"]  # not photos2/
    assert main(similar(prefix, "--source", "photos2/mid.jpg")) == 0
    assert [line.split()[-1] for line in capsys.readouterr().out.splitlines()[2:]] == ["mid"]


def test_model_picks_the_index_that_model_built(prefix, capsys):
    assert main(similar(prefix, "--model", "other-net")) == 0
    out = capsys.readouterr().out
    assert "other-net v1" in out and f"{prefix}images-other-net-1" in out and "other" in out.splitlines()[2]


def test_an_unknown_model_is_refused_with_the_indexed_ones(prefix, capsys):
    assert main(similar(prefix, "--model", "digit-cnn")) == 2
    err = capsys.readouterr().err
    assert "no images index was built by model 'digit-cnn'; indexed models: digits-cnn, other-net" in err
