"""``streamdl models compare``: live quality and drift of every version side by side, from the quality indices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streamdl.settings import Settings
from streamdl.streams.quality.indices import labels_alias, reports_alias
from streamdl.streams.quality.sink import quality_windows
from streamdl.streams.quality.windows import QualityReport, live_quality

SIGNALS = ("class_psi", "confidence_psi", "embedding_mmd")


def latest_drift(es: Any, settings: Settings) -> dict[str, dict[str, Any]]:
    """The latest drift report of each version (any worker)."""
    found = es.options(ignore_status=404).search(
        index=reports_alias(settings),
        size=0,
        query={"term": {"kind": "drift"}},
        aggs={
            "versions": {
                "terms": {"field": "model_version", "size": 50},
                "aggs": {"last": {"top_hits": {"size": 1, "sort": [{"window_end": "desc"}]}}},
            }
        },
    )
    buckets = dict(found).get("aggregations", {}).get("versions", {}).get("buckets", [])
    return {b["key"]: b["last"]["hits"]["hits"][0]["_source"] for b in buckets}


def comparison(
    reports: Mapping[str, Sequence[QualityReport]],
    drift: Mapping[str, Mapping[str, Any]],
    serving: str | None,
    roles: Mapping[str, str] | None = None,
) -> str:
    """The table: one row per version, its role after it (``*`` serving, ``shadow``, ``canary@F``: ``roles`` maps
    a version to its marker); per window (``all`` = every label) accuracy on N labels, then ECE and label delay
    p95 over all labels, then the latest drift window's signals."""
    marks = {**(roles or {}), **({serving: "*"} if serving else {})}
    windows = list(reports)
    by_version: dict[str, dict[str, QualityReport]] = {}
    for window, rows in reports.items():
        for r in rows:
            by_version.setdefault(r.model_version, {})[window] = r
    versions = sorted(set(by_version) | set(drift) | set(roles or ()), key=lambda v: (len(v), v))
    if not versions:
        return "no live quality yet: no label has been joined to a prediction and no drift window has closed"
    header = ["version", *[f"acc {w}" for w in windows], "ECE", "delay p95", *SIGNALS]
    rows = [header]
    for version in versions:
        row = [f"{version} {marks[version]}" if version in marks else version]
        for window in windows:
            r = by_version.get(version, {}).get(window)
            row.append(f"{r.accuracy:.3f} ({r.labelled})" if r else "-")
        overall = by_version.get(version, {}).get("all")
        row.append(f"{overall.ece:.3f}" if overall and overall.ece is not None else "-")
        row.append(f"{overall.delay_p95_secs:.1f}s" if overall and overall.delay_p95_secs is not None else "-")
        last = drift.get(version, {})
        row += [f"{last[s]:.3f}" if last.get(s) is not None else "-" for s in SIGNALS]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    legend = "* serving"
    if roles:
        legend += "; shadow: scored beside it, never served or alerted on; canary@F: serves the share F of the ids"
    return "\n".join(lines) + f"\n({legend}; accuracy on N labels per window; drift: the latest closed window)"


def compare(
    settings: Settings, es: Any, serving: str | None, now: float, roles: Mapping[str, str] | None = None
) -> str:
    """The comparison table of the served model's versions, read from Elasticsearch (``roles``: see
    :func:`comparison`)."""
    reports = {
        name: live_quality(es, labels_alias(settings), name, secs, now)
        for name, secs in quality_windows(settings).items()
    }
    reports["all"] = live_quality(es, labels_alias(settings), "all", None, now)
    return comparison(reports, latest_drift(es, settings), serving, roles)
