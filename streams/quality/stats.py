"""The statistics of live quality and drift, as pure functions over counts and arrays (no I/O)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

EPSILON = 1e-4
"""Floor of a bin's share in PSI (an empty bin would make it infinite)."""


def accuracy_by_class(confusion: Mapping[tuple[str, str], int]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-class precision and recall from ``(true, predicted) -> count``; a class never predicted (or never
    labelled) has no precision (or recall) entry rather than a made-up zero."""
    predicted: dict[str, int] = {}
    actual: dict[str, int] = {}
    hits: dict[str, int] = {}
    for (true, pred), n in confusion.items():
        predicted[pred] = predicted.get(pred, 0) + n
        actual[true] = actual.get(true, 0) + n
        if true == pred:
            hits[true] = hits.get(true, 0) + n
    precision = {c: hits.get(c, 0) / n for c, n in predicted.items() if n}
    recall = {c: hits.get(c, 0) / n for c, n in actual.items() if n}
    return precision, recall


def expected_calibration_error(bins: Sequence[tuple[int, float, int]]) -> float | None:
    """ECE from ``(count, mean confidence, correct)`` per confidence bin: the count-weighted mean gap between
    confidence and accuracy (``None`` without labels)."""
    total = sum(n for n, _, _ in bins)
    if total == 0:
        return None
    return sum(n / total * abs(correct / n - conf) for n, conf, correct in bins if n)


def confidence_bin(confidence: float, bins: int) -> int:
    """The calibration bin of a confidence in [0, 1] (``bins`` equal-width bins, 1.0 in the last)."""
    return min(bins - 1, max(0, int(confidence * bins)))


@dataclass(frozen=True)
class Comparison:
    """A one-sided two-proportion z-test: is the champion worse than the previous one by more than a margin?"""

    z: float
    critical: float
    """The z the test must exceed at this look."""
    alpha: float
    """The significance level spent at this look."""
    look: int

    @property
    def significant(self) -> bool:
        return self.z > self.critical


def worse_by_margin(
    champion: tuple[int, int],
    previous: tuple[int, int],
    margin: float,
    alpha: float,
    min_labels: int,
    after_look: int = 0,
) -> Comparison | None:
    """Test H0: acc(previous) - acc(champion) <= margin against H1: it is more, from ``(correct, labelled)`` of
    each version. ``None`` while either has fewer than ``min_labels`` labels.

    The test is looked at again as labels arrive, so its level is spent over looks (Bonferroni over a
    doubling schedule): look ``k`` is taken when the smaller sample reaches ``min_labels * 2**(k-1)`` and
    gets ``alpha / (k * (k + 1))``; these sum to ``alpha`` over all looks, so the chance of ever rolling back a
    version that is not worse by more than the margin stays below ``alpha`` however long the data grows.
    Each look is taken once: ``None`` until the look after ``after_look`` is reached (the caller remembers the
    last look it took; testing again within a look would spend more than its level)."""
    (c1, n1), (c0, n0) = champion, previous
    smaller = min(n1, n0)
    if smaller < min_labels or n1 == 0 or n0 == 0:
        return None
    look = int(math.floor(math.log2(smaller / min_labels))) + 1
    if look <= after_look:
        return None
    level = alpha / (look * (look + 1))
    p1, p0 = c1 / n1, c0 / n0
    se = math.sqrt(max(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0, 1e-12))
    z = (p0 - p1 - margin) / se
    return Comparison(z=z, critical=_normal_quantile(1 - level), alpha=level, look=look)


def _normal_quantile(p: float) -> float:
    """The standard normal quantile (bisection on ``erfc``; exact enough for a test's critical value)."""
    low, high = -40.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index between two count (or share) vectors over the same bins."""
    ref = np.maximum(reference / max(reference.sum(), 1), EPSILON)
    cur = np.maximum(current / max(current.sum(), 1), EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def jensen_shannon(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two count vectors over the same bins."""
    p = reference / max(reference.sum(), 1)
    q = current / max(current.sum(), 1)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return kl(p, m) / 2 + kl(q, m) / 2


def mmd(reference: np.ndarray, current: np.ndarray, bandwidth: float | None = None) -> float:
    """Squared maximum mean discrepancy with a Gaussian kernel (biased estimate, >= 0) between two samples of
    embeddings; the bandwidth defaults to the median pairwise distance within the reference."""
    x = _unit(np.asarray(reference, np.float64))
    y = _unit(np.asarray(current, np.float64))
    if bandwidth is None:
        bandwidth = median_distance(x)

    def kernel(a: np.ndarray, b: np.ndarray) -> float:
        d2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0)
        return float(np.exp(-d2 / (2 * bandwidth**2)).mean())

    return max(0.0, kernel(x, x) + kernel(y, y) - 2 * kernel(x, y))


def median_distance(x: np.ndarray) -> float:
    """The median pairwise distance of a sample (the kernel bandwidth heuristic); 1.0 for a degenerate one."""
    x = np.asarray(x, np.float64)
    d2 = np.maximum((x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * x @ x.T, 0)
    upper = np.sqrt(d2[np.triu_indices(len(x), 1)])
    med = float(np.median(upper)) if upper.size else 0.0
    return med if med > 0 else 1.0


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: the index compares embeddings by cosine, so drift does too."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)
