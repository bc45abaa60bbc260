"""The installed distribution: everything under the streamdl namespace, every package listed."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def listed() -> tuple[dict[str, str], set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mapping = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    return mapping, set(cfg["options"]["packages"].split())


def test_every_package_folder_is_listed_under_the_namespace():
    mapping, packages = listed()
    on_disk = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            on_disk.add(".".join([name, *rel.parts]))
    assert packages == on_disk
    assert all(p == "streamdl" or p.startswith("streamdl.") for p in packages)


def test_the_card_folders_map_into_the_namespace():
    mapping, _ = listed()
    assert mapping == {
        "streamdl": "streamdl",
        "streamdl.streams": "streams",
        "streamdl.models": "models",
        "streamdl.connectors": "connectors",
        "streamdl.infra": "infra",
    }
