"""Promotion on live evidence: ``streamdl models promote V --min-labels N [--margin M]``.

The candidate (a shadow or a canary, or any version that served before) and the champion each need at least
``N`` joined live labels, and a one-sided non-inferiority test must show that the candidate is not worse than
the champion by more than ``M``: H0 ``acc(champion) − acc(V) ≥ M`` against H1 ``acc(champion) − acc(V) < M``.
It is the rollback rule's test (:func:`~streamdl.streams.quality.stats.worse_by_margin`) with the two versions
swapped and the margin negated, with the same spending of the level over looks: look ``k`` is taken when the
smaller sample reaches ``N · 2^(k−1)`` labels, at level ``alpha / (k(k+1))``. The look taken is recorded on the
candidate in the registry (tag ``promotion_look.<champion>``), so asking again within the same look is refused
until the labels double: the chance of ever promoting a version worse by more than the margin stays below
``alpha`` however often it is asked while the data grows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamdl.settings import Settings
from streamdl.streams.quality.indices import labels_alias
from streamdl.streams.quality.stats import worse_by_margin
from streamdl.streams.quality.windows import live_quality


@dataclass(frozen=True)
class Verdict:
    """Whether the evidence lets the candidate be promoted, and the one-line reason."""

    accepted: bool
    message: str
    look: int = 0
    """The look of the test taken (0: none was taken)."""


def look_tag(champion: str) -> str:
    """The candidate's registry tag holding the last look taken against ``champion``."""
    return f"promotion_look.{champion}"


def judge(
    candidate: str,
    champion: str,
    counts: Mapping[str, tuple[int, int]],
    min_labels: int,
    margin: float,
    alpha: float,
    after_look: int = 0,
) -> Verdict:
    """The verdict from ``version -> (correct, labelled)`` live counts (see the module docstring)."""
    (c1, n1), (c0, n0) = counts.get(candidate, (0, 0)), counts.get(champion, (0, 0))
    for version, n, what in ((candidate, n1, "version"), (champion, n0, "the champion, version")):
        if n < min_labels:
            return Verdict(
                False,
                f"{what} {version} has {n} joined live labels; --min-labels needs {min_labels} "
                f"(run it as the shadow or a canary until its labels arrive)",
            )
    test = worse_by_margin((c0, n0), (c1, n1), -margin, alpha, min_labels, after_look)
    if test is None:
        return Verdict(
            False,
            f"look {after_look} of the test was taken already on these labels; the next look comes when both "
            f"versions have {min_labels * 2**after_look} labels (each look spends its share of the level once)",
        )
    numbers = (
        f"live accuracy {c1 / n1:.4f} on {n1} labels against the champion {champion}'s {c0 / n0:.4f} on {n0} "
        f"(margin {margin:g}, z {test.z:.2f}, critical {test.critical:.2f} at level {test.alpha:.4g}, look {test.look})"
    )
    if test.significant:
        return Verdict(True, f"version {candidate}: not worse by more than the margin: {numbers}", test.look)
    return Verdict(False, f"version {candidate}: not shown to be within the margin: {numbers}", test.look)


def promotion_evidence(
    settings: Settings, es: Any, registry: Any, version: str, min_labels: int, margin: float, alpha: float
) -> Verdict:
    """The verdict on promoting ``version`` of the served model, from the live labels in Elasticsearch; the look
    taken is recorded on the version in the registry."""
    name = settings.model_name
    target, champion = registry.show(name, version), registry.champion(name)
    if champion is None:
        return Verdict(False, f"{name} has no champion to compare version {target.version} with")
    if champion.version == target.version:
        return Verdict(True, f"version {target.version} is the champion already")
    reports = live_quality(es, labels_alias(settings), "all", None, time.time())
    counts = {r.model_version: (r.correct, r.labelled) for r in reports}
    after = int(target.tags.get(look_tag(champion.version)) or 0)
    verdict = judge(target.version, champion.version, counts, min_labels, margin, alpha, after)
    if verdict.look:
        registry.note(name, target.version, look_tag(champion.version), str(verdict.look))
    return verdict
