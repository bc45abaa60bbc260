"""Automatic rollback: the champion loses to the previous champion on live labels → the registry rolls back.

Judged with :func:`~streamdl.streams.quality.stats.worse_by_margin` (one-sided two-proportion z-test, level
spent over a doubling schedule of looks) on every label each version ever had joined. A rollback moves the
registry's ``champion`` alias back (:meth:`Registry.rollback`), announces the previous version on
``model-updates`` (every worker swaps to it; a later announcement wins over an earlier one) and raises a
critical ``model_rolled_back`` alert with both accuracies.

Several workers judge the same numbers; each re-reads the champion just before acting and acts only
while the judged version still serves, so a rollback already done by another worker is not repeated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from streamdl.settings import Settings
from streamdl.streams.pipelines.alerts import Alert
from streamdl.streams.quality import metrics
from streamdl.streams.quality.stats import Comparison, worse_by_margin

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """Roll ``champion`` back to ``previous``: the evidence."""

    name: str
    champion: str
    previous: str
    champion_counts: tuple[int, int]
    previous_counts: tuple[int, int]
    comparison: Comparison

    def evidence(self, margin: float) -> dict[str, Any]:
        (c1, n1), (c0, n0) = self.champion_counts, self.previous_counts
        return {
            "rolled_back_version": self.champion,
            "restored_version": self.previous,
            "champion_accuracy": round(c1 / n1, 6),
            "champion_labels": n1,
            "previous_accuracy": round(c0 / n0, 6),
            "previous_labels": n0,
            "margin": margin,
            "z": round(self.comparison.z, 4),
            "critical_z": round(self.comparison.critical, 4),
            "alpha_spent": self.comparison.alpha,
            "look": self.comparison.look,
            "test": "one-sided two-proportion z-test, level alpha/(k(k+1)) at look k",
        }


def decide(
    name: str,
    history: list[str],
    counts: Mapping[str, tuple[int, int]],
    settings: Settings,
    looks: dict[tuple[str, str], int] | None = None,
) -> Decision | None:
    """A rollback when the last promoted version (``history[-1]``) is significantly worse than the one before
    by more than ``rollback_margin``; ``counts`` is ``version -> (correct, labelled)``. ``looks`` remembers the
    last look taken per pair of versions (each look of the test is taken once)."""
    if len(history) < 2:
        return None
    champion, previous = history[-1], history[-2]
    if champion not in counts or previous not in counts:
        return None
    looks = {} if looks is None else looks
    comparison = worse_by_margin(
        counts[champion], counts[previous], settings.rollback_margin, settings.rollback_alpha,
        settings.rollback_min_labels, looks.get((champion, previous), 0),
    )  # fmt: skip
    if comparison is None:
        return None
    looks[(champion, previous)] = comparison.look
    if not comparison.significant:
        return None
    return Decision(name, champion, previous, counts[champion], counts[previous], comparison)


class RollbackGuard:
    """Reads the registry's promotion history, decides, and acts."""

    def __init__(
        self,
        settings: Settings,
        raise_alert: Callable[[Alert], None],
        registry: Any = None,
        announce: Callable[[Settings, Any], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.raise_alert, self.clock = settings, raise_alert, clock
        self._registry, self._announce = registry, announce
        self.looks: dict[tuple[str, str], int] = {}
        """The last look of the test taken per (champion, previous); a restart takes the current look again."""

    def registry(self) -> Any:
        """The model registry (``None`` when there is none yet: nothing was ever promoted)."""
        if self._registry is None:
            from streamdl.models.registry import Registry

            if not Registry.exists(self.settings):
                return None
            self._registry = Registry.from_settings(self.settings)
        return self._registry

    def check(self, counts: Mapping[str, tuple[int, int]]) -> Decision | None:
        """Roll back when :func:`decide` says so; returns the decision acted on."""
        registry = self.registry()
        if registry is None:
            return None
        name = self.settings.model_name
        from streamdl.models.registry import HISTORY_TAG

        history = [v for v in (registry.model_tag(name, HISTORY_TAG) or "").split(",") if v]
        decision = decide(name, history, counts, self.settings, self.looks)
        if decision is None:
            return None
        champion = registry.champion(name)
        if champion is None or champion.version != decision.champion:
            return None  # another worker rolled back already
        restored = registry.rollback(name)
        announce = self._announce
        if announce is None:
            from streamdl.streams.jobs.retrain import announce
        announce(self.settings, restored)
        evidence = decision.evidence(self.settings.rollback_margin)
        registry.note(name, decision.champion, "rolled_back", str(evidence))
        metrics.ROLLBACKS.labels(name, decision.champion, restored.version).inc()
        logger.critical(
            "rolled %s back from version %s (live accuracy %.4f on %d labels) to %s (%.4f on %d labels)",
            name, decision.champion, evidence["champion_accuracy"], evidence["champion_labels"], restored.version,
            evidence["previous_accuracy"], evidence["previous_labels"],
        )  # fmt: skip
        now = self.clock()
        self.raise_alert(
            Alert(
                rule="model_rolled_back",
                kind="model_rolled_back",
                severity="critical",
                subject_id=f"{name}:{decision.champion}",
                model_name=name,
                model_version=decision.champion,
                evidence=evidence,
                ts=now,
                window_start=now,
                raised_at=now,
            )
        )
        return decision
