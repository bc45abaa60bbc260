"""``streamdl index status``: the product's indices, which alias points where, counts and models."""

from __future__ import annotations

from dataclasses import dataclass

from elasticsearch import Elasticsearch

from streamdl.settings import ALIAS_NAMES, Settings


@dataclass(frozen=True)
class IndexRow:
    index: str
    aliases: tuple[str, ...]
    documents: int
    model: str
    health: str


def index_status(settings: Settings, es: Elasticsearch) -> list[IndexRow]:
    """Every index under ``index_prefix``: its aliases, document count, the model that built it (images)."""
    pattern = f"{settings.index_prefix}*"
    stats = {row["index"]: row for row in es.cat.indices(index=pattern, format="json", h="index,docs.count,health")}
    aliases: dict[str, list[str]] = {}
    for row in es.cat.aliases(name=[settings.alias(n) for n in ALIAS_NAMES], format="json"):
        aliases.setdefault(row["index"], []).append(row["alias"])
    metas = (
        {name: body["mappings"].get("_meta", {}) for name, body in es.indices.get_mapping(index=pattern).items()}
        if stats
        else {}
    )
    rows = []
    for name in sorted(stats):
        meta = metas.get(name, {})
        model = (
            f"{meta['model_name']} v{meta['model_version']} ({meta['embedding_size']}-d)"
            if "model_name" in meta
            else "-"
        )
        rows.append(
            IndexRow(
                name,
                tuple(sorted(aliases.get(name, []))),
                int(stats[name]["docs.count"] or 0),
                model,
                stats[name]["health"],
            )
        )
    return rows


def format_index_status(rows: list[IndexRow]) -> str:
    width = max([len(r.index) for r in rows] + [5])
    lines = [f"{'index':<{width}}  {'alias':<18}{'documents':>10}  {'health':<8}model"]
    lines += [
        f"{r.index:<{width}}  {','.join(r.aliases) or '-':<18}{r.documents:>10}  {r.health:<8}{r.model}" for r in rows
    ]
    return "\n".join(lines)
