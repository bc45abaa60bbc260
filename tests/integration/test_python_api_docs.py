"""Every ```python block of docs/python-api.md runs, in order and in one namespace, against the local stack:
a ``photos/`` folder of scikit-learn digits (a sub-folder per label, a ``3/query.png`` and one broken file)
in a working folder of its own, topics, indices and an MLflow registry of the test's own."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from streamdl.connectors.image_producer import iter_digits
from streamdl.settings import Settings

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


def snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_the_page_has_the_promised_examples_first():
    blocks = snippets()
    assert len(blocks) >= 6
    assert "fit_head" in blocks[0] and "register()" in blocks[0]
    assert "similar(" in blocks[1] and "contact_sheet(" in blocks[1]


def test_every_snippet_runs(stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from streamdl.connectors.es_client import es_client
    from streamdl.connectors.kafka_admin import admin_client
    from streamdl.models.retraining import heads

    photos = tmp_path / "photos"
    for item in iter_digits(150):
        (photos / item.label).mkdir(parents=True, exist_ok=True)
        (photos / item.label / f"{item.image_id}.png").write_bytes(item.data)
    (photos / "3" / "query.png").write_bytes(
        next(i for i in iter_digits(300) if i.label == "3" and not (photos / "3" / f"{i.image_id}.png").exists()).data
    )
    (photos / "0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    tag = f"t{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(tmp_path)  # no .env here: the snippets' settings come from these variables
    for name, value in {
        "STREAMDL_STATE_DIR": str(stack.state_dir),  # the cached digits-cnn
        "STREAMDL_TOPIC_PREFIX": f"{tag}.",
        "STREAMDL_INDEX_PREFIX": f"{tag}-",
        "STREAMDL_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "STREAMDL_ARCHIVE_URL": str(tmp_path / "archive"),
    }.items():
        monkeypatch.setenv(name, value)
    # one grid point instead of eight: the same code path in an eighth of the time
    monkeypatch.setattr(heads, "GRID", {"arch": ("softmax",), "learning_rate": (1e-2,), "l2": (1e-4,)})
    from streamdl.connectors.setup import init_all
    from streamdl.settings import load_settings

    settings = load_settings()
    init_all(settings)
    namespace: dict = {}
    try:
        for number, code in enumerate(snippets(), 1):
            try:
                exec(compile(code, f"{DOC.name} snippet {number}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"snippet {number} of {DOC.name} failed:\n{code}") from exc
        assert namespace["result"].status in ("promoted", "registered")
        assert namespace["report"].indexed == 151 and namespace["bad"].num_rows == 1
        assert len(namespace["found"].neighbours) == 5 and namespace["sheet"].size[0] > 300
        assert namespace["sent"].sent == 151 and namespace["images"].num_rows == 151
    finally:
        es_client(settings).options(ignore_status=404).indices.delete(index=f"{tag}-*")
        admin = admin_client(settings)
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tag)]
        if topics:
            admin.delete_topics(topics, operation_timeout=30)
