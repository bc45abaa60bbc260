"""The import graph has no upward arrow: every module imports only its own layer or those below.

Layers, lowest first (docs/architecture.md draws them):

    core        streamdl/*.py         settings, errors, records, event contract, alert rules, time, metrics registry
    models      models/               decoding, model handlers, event models, registry (no Faust, no Beam)
    connectors  connectors/           Kafka, Elasticsearch, archive, webhook clients
    infra       infra/                the local stack (core only)
    streams     streams/              pipelines, agents, jobs, web, cli (may use everything)

Imports inside functions count too (they are how a layer would sneak upward).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"streamdl": "core", "models": "models", "connectors": "connectors", "infra": "infra", "streams": "streams"}
RANK = {"core": 0, "models": 1, "connectors": 2, "infra": 2, "streams": 3}
PUBLIC_API = {"streamdl/__init__.py", "streamdl/__main__.py"}
"""The package's front door and ``python -m streamdl`` sit above everything (they import lazily)."""


def layer_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "streamdl":
        return None
    if len(parts) > 1 and parts[1] in FOLDERS and parts[1] != "streamdl":
        return FOLDERS[parts[1]]
    return "core"


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def modules() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_the_layers_are_known():
    assert len(modules()) > 50


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_higher_layer(path: Path):
    rel = str(path.relative_to(ROOT))
    if rel in PUBLIC_API:
        return
    own = FOLDERS[path.relative_to(ROOT).parts[0]]
    upward = []
    for line, name in imports(path):
        target = layer_of_module(name)
        if target is None or target == own:
            continue
        if RANK[target] > RANK[own] or (own == "infra" and target != "core"):
            upward.append(f"{rel}:{line} ({own}) imports {name} ({target})")
    assert not upward, "\n".join(upward)


def test_nothing_generic_is_imported_at_the_top():
    """Every first-party import goes through the streamdl namespace (no `import models`)."""
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in modules() + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
        for line, name in imports(p)
        if name.split(".")[0] in ("models", "connectors", "infra", "streams")
    ]
    assert not bad, "\n".join(bad)


def test_models_import_neither_faust_nor_beam():
    """One handler shape serves the workers and the Beam job (DESIGN.md)."""
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in sorted((ROOT / "models").rglob("*.py"))
        for line, name in imports(p)
        if name.split(".")[0] in ("faust", "apache_beam")
    ]
    assert not bad, "\n".join(bad)
