"""Near-duplicates and novelty in the stream: one multi-search per micro-batch.

For each new image, its nearest neighbours among the images searchable when the batch is indexed (itself
excluded) are looked up: earlier batches' images once Elasticsearch refreshed them (within a second). The
nearest at or above ``near_duplicate_threshold`` is a ``near_duplicate`` finding naming it; a mean similarity
of a full set of ``neighbour_k`` neighbours below ``novelty_threshold`` is a ``novel`` finding, once the index
holds ``novelty_min_images``. Images of the same batch, or of about the last second, do not see each other.
Findings become alerts through the alert rules (:mod:`streamdl.streams.pipelines.alerts`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from elasticsearch import ApiError, Elasticsearch, TransportError

from streamdl.records import Document
from streamdl.settings import Settings

logger = logging.getLogger(__name__)


class NeighbourCheck:
    """Looks up the neighbours of a batch's embeddings and turns them into findings."""

    def __init__(self, settings: Settings, es: Elasticsearch, index: str) -> None:
        self.settings, self.es, self.index = settings, es, index
        self._enough_for_novelty = settings.novelty_min_images == 0

    def _judge_novelty(self) -> bool:
        """Whether the index holds ``novelty_min_images`` yet (counted until it does, then never again)."""
        if not self._enough_for_novelty:
            self._enough_for_novelty = self.es.count(index=self.index)["count"] >= self.settings.novelty_min_images
        return self._enough_for_novelty

    def findings(self, docs: Sequence[Document]) -> dict[str, dict[str, dict[str, Any]]]:
        """``{image id: {finding: evidence}}`` for a batch's documents; an Elasticsearch failure is logged and
        yields none."""
        if not docs:
            return {}
        k = self.settings.neighbour_k
        searches: list[dict[str, Any]] = []
        for doc in docs:
            # k + 1 without a filter, the image itself dropped below (it is indexed when its message comes again):
            # an ``ids`` filter made Elasticsearch build a bitset over the whole index for every lookup (the
            # lookups took a third longer, the same neighbours; docs/benchmarks.md)
            searches += [
                {"index": self.index},
                {
                    "knn": {
                        "field": "embedding",
                        "query_vector": doc.body["embedding"],
                        "k": k + 1,
                        "num_candidates": max(20, 4 * k),
                    },
                    "size": k + 1,
                    "_source": False,
                },
            ]
        try:
            judge_novelty = self._judge_novelty()
            responses = self.es.msearch(searches=searches)["responses"]
        except (ApiError, TransportError) as exc:
            logger.warning("neighbour lookup failed for a batch of %d, no similarity alerts for it: %s", len(docs), exc)
            return {}
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for doc, resp in zip(docs, responses):
            image_id = doc.id
            hits = resp.get("hits", {}).get("hits", [])
            # a document's id is its image id; cosine score = (1 + cos) / 2
            sims = [(h["_id"], round(2 * h["_score"] - 1, 6)) for h in hits if h["_id"] != image_id][:k]
            if not sims:
                continue
            evidence = {"neighbours": [{"image_id": i, "similarity": s} for i, s in sims]}
            top_id, top_sim = sims[0]
            found: dict[str, dict[str, Any]] = {}
            if top_sim >= self.settings.near_duplicate_threshold:
                found["near_duplicate"] = {
                    **evidence,
                    "original": top_id,
                    "similarity": top_sim,
                    "threshold": self.settings.near_duplicate_threshold,
                }
            mean = float(np.mean([s for _, s in sims]))
            if judge_novelty and len(sims) == k and mean < self.settings.novelty_threshold:
                found["novel"] = {
                    **evidence,
                    "mean_similarity": round(mean, 6),
                    "threshold": self.settings.novelty_threshold,
                }
            if found:
                out[image_id] = found
        return out
