"""Similarity search over the indexed embeddings: "images like this one".

A query is an image (bytes) or the id of an indexed image. Image queries are featurized with the
model that built the index (its name and version are in the index's ``_meta``), since vectors of
different models are not comparable. Search is Elasticsearch's approximate kNN (HNSW), or, for
checking recall, an exact scan computed here (the bundled node has no scripting for
``script_score``).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from elasticsearch import ApiError, Elasticsearch, helpers

from streamdl.connectors.es_client import alias_targets, es_client
from streamdl.errors import StreamdlError
from streamdl.models.decode import DecodeError, DecodeLimits, decode_image
from streamdl.settings import Settings
from streamdl.times import parse_since

MAX_K = 1000
MAX_CANDIDATES = 10_000
MAX_PAGE_SIZE = 100
BROWSE_WINDOW = 10_000
"""Browsing pages by number reaches this far (Elasticsearch's ``index.max_result_window``); filters narrow it."""


class SearchError(StreamdlError):
    """A query that cannot be answered as asked; ``status`` is the HTTP status it maps to."""

    status = 400


class NotFound(SearchError):
    """The image id, index or model asked for does not exist."""

    status = 404


@dataclass(frozen=True)
class Filters:
    """Optional restrictions on the neighbours (all given ones must hold)."""

    label: str | None = None
    source: str | None = None
    """A source (file path) or a folder: ``photos`` matches ``photos/a.jpg`` and ``photos/cats/b.jpg``."""
    since: str | None = None
    """ISO time, or a duration ago like ``30m``, ``2h``, ``7d`` (``now-2h`` too): :func:`streamdl.times.parse_since`."""
    until: str | None = None
    model_version: str | None = None

    @classmethod
    def from_mapping(cls, given: Mapping[str, Any]) -> Filters:
        """Filters from e.g. query parameters; an unknown name is an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise SearchError(f"unknown filter field {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**{k: str(v) for k, v in given.items() if v not in (None, "")})

    def clauses(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, field in (("label", "label"), ("model_version", "model_version")):
            value = getattr(self, name)
            if value is not None:
                out.append({"term": {field: value}})
        if self.source is not None:  # the exact source, or anything under it as a folder
            folder = self.source.rstrip("/") + "/"
            out.append({"bool": {"should": [{"term": {"source": self.source}}, {"prefix": {"source": folder}}]}})
        if self.since or self.until:
            bounds: dict[str, Any] = {"format": "epoch_millis"}
            for bound, name in (("gte", "since"), ("lte", "until")):
                value = getattr(self, name)
                if value:
                    try:
                        bounds[bound] = int(parse_since(value, flag=name) * 1000)
                    except StreamdlError as exc:
                        raise SearchError(str(exc)) from None
            out.append({"range": {"processed_time": bounds}})
        return out


@dataclass(frozen=True)
class Neighbour:
    image_id: str
    similarity: float | None
    """Cosine similarity to the query, -1..1 (``None`` when browsing: there is no query)."""
    label: str | None
    true_label: str | None
    source: str | None
    model_version: str | None
    processed_time: str | None
    thumbnail: bytes | None

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "thumbnail"}
        out["thumbnail"] = base64.b64encode(self.thumbnail).decode() if self.thumbnail else None
        return out


@dataclass(frozen=True)
class SearchResult:
    index: str
    model_name: str
    model_version: str
    query_id: str | None
    exact: bool
    took_ms: float
    neighbours: list[Neighbour]

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "query_id": self.query_id,
            "exact": self.exact,
            "took_ms": round(self.took_ms, 2),
            "neighbours": [n.as_json() for n in self.neighbours],
        }


@dataclass(frozen=True)
class BrowseResult:
    """One page of the indexed images, newest first."""

    index: str
    total: int
    """Images that match the filters (all pages)."""
    page: int
    size: int
    images: list[Neighbour]

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "total": self.total,
            "page": self.page,
            "size": self.size,
            "pages": min(-(-self.total // self.size), BROWSE_WINDOW // self.size),
            "images": [n.as_json() for n in self.images],
        }


@dataclass(frozen=True)
class IndexModel:
    """The concrete index behind the alias and the model that built it."""

    index: str
    model_name: str
    model_version: str
    dims: int
    model_ref: str
    """What ``load_handler`` takes to load the model (a name or a file path)."""


_SOURCE = ["image_id", "label", "true_label", "source", "model_version", "processed_time", "thumbnail"]


class SimilaritySearch:
    """Queries against the images alias. The query model is loaded on first use and kept."""

    def __init__(
        self, settings: Settings, es: Elasticsearch | None = None, alias: str | None = None, model: str | None = None
    ) -> None:
        self.settings = settings
        self.es = es or es_client(settings)
        self.alias = alias or settings.alias("images")
        self.model = model
        """Search the index this model built (the alias's when it is that model's; ``None``: the alias's)."""
        self._handler = None
        self._handler_for: IndexModel | None = None
        self._loading = threading.Lock()  # the query model loads once, even when queries come from many threads

    # --- what is searched ------------------------------------------------------------
    def index_model(self) -> IndexModel:
        targets = alias_targets(self.es, self.alias)
        if not targets:
            raise NotFound(
                f"no images index yet: the alias {self.alias!r} does not exist (start a worker and produce images)"
            )
        index = targets[0]
        meta = self.es.indices.get_mapping(index=index)[index]["mappings"].get("_meta", {})
        if self.model is not None and self.model not in (meta.get("model_name"), meta.get("model_ref")):
            index, meta = self._index_of(self.model)
        if "model_name" not in meta:
            raise SearchError(f"index {index} does not say which model built it (no _meta.model_name); reindex it")
        return IndexModel(
            index,
            meta["model_name"],
            str(meta["model_version"]),
            int(meta["embedding_size"]),
            str(meta.get("model_ref", meta["model_name"])),
        )

    def _metas(self) -> dict[str, dict[str, Any]]:
        """The ``_meta`` of every index named after this alias (one per model and version)."""
        mappings = self.es.options(ignore_status=404).indices.get_mapping(index=f"{self.alias}-*")
        return {
            i: m["mappings"].get("_meta", {}) for i, m in mappings.items() if isinstance(m, dict) and "mappings" in m
        }

    def indexed_models(self) -> list[dict[str, Any]]:
        """Each index named after this alias with the model that built it, and whether the alias points at it."""
        current = set(alias_targets(self.es, self.alias))
        return [
            {
                "index": index,
                "model_name": meta.get("model_name"),
                "model_version": None if meta.get("model_version") is None else str(meta["model_version"]),
                "current": index in current,
            }
            for index, meta in sorted(self._metas().items())
        ]

    def _index_of(self, model: str) -> tuple[str, dict[str, Any]]:
        """The newest index behind this alias's name that ``model`` built; :class:`NotFound` naming the
        models that have one otherwise."""
        metas = self._metas()
        built = sorted(
            (i for i, m in metas.items() if model in (m.get("model_name"), m.get("model_ref"))), reverse=True
        )
        if not built:
            known = sorted({str(m["model_name"]) for m in metas.values() if "model_name" in m})
            raise NotFound(
                f"no images index was built by model {model!r}; indexed models: {', '.join(known) or 'none'} "
                f"('streamdl index reindex --model {model}' builds one)"
            )
        return built[0], metas[built[0]]

    def stored(self, image_id: str, index: str | None = None) -> Neighbour | None:
        """An indexed image's own label and thumbnail (similarity 1.0), to show it beside its neighbours."""
        resp = self.es.options(ignore_status=404).get(index=index or self.alias, id=image_id, source=_SOURCE)
        return _neighbour(resp["_source"], 1.0) if resp.get("found") else None

    def browse(self, filters: Filters = Filters(), page: int = 1, size: int = 24) -> BrowseResult:
        """What is indexed, newest (``processed_time``) first, ``size`` per page (1-based ``page``)."""
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise SearchError(f"size must be between 1 and {MAX_PAGE_SIZE}; got {size}")
        if page < 1 or page * size > BROWSE_WINDOW:
            raise SearchError(
                f"page must be between 1 and {BROWSE_WINDOW // size} at size {size}; got {page} "
                "(narrow the filters, e.g. since/until, to reach older images)"
            )
        target = self.index_model()
        try:
            resp = self.es.search(
                index=target.index,
                query={"bool": {"filter": filters.clauses()}},
                sort=[{"processed_time": {"order": "desc", "unmapped_type": "date"}}, {"image_id": "asc"}],
                from_=(page - 1) * size,
                size=size,
                source=_SOURCE,
                track_total_hits=True,
            )
        except ApiError as exc:
            raise SearchError(f"Elasticsearch refused the query: {exc.message}") from None
        images = [_neighbour(h["_source"], None) for h in resp["hits"]["hits"]]
        return BrowseResult(target.index, int(resp["hits"]["total"]["value"]), page, size, images)

    # --- queries -----------------------------------------------------------------------
    def by_id(
        self,
        image_id: str,
        k: int = 10,
        num_candidates: int | None = None,
        filters: Filters = Filters(),
        exact: bool = False,
    ) -> SearchResult:
        """Neighbours of an indexed image (itself excluded)."""
        num_candidates = check_sizes(k, num_candidates)
        target = self.index_model()
        resp = self.es.options(ignore_status=404).get(index=target.index, id=image_id, source=["embedding"])
        if not resp.get("found"):
            raise NotFound(f"no image with id {image_id!r} in {target.index}")
        return self._search(
            target,
            np.asarray(resp["_source"]["embedding"], np.float32),
            k,
            num_candidates,
            filters,
            exact,
            exclude=(image_id,),
            query_id=image_id,
        )

    def by_image(
        self,
        data: bytes,
        k: int = 10,
        num_candidates: int | None = None,
        filters: Filters = Filters(),
        exact: bool = False,
    ) -> SearchResult:
        """Neighbours of an image given as file bytes, featurized with the index's model."""
        num_candidates = check_sizes(k, num_candidates)
        target = self.index_model()
        return self._search(
            target, self.embed(data, target), k, num_candidates, filters, exact, exclude=(), query_id=None
        )

    def embed(self, data: bytes, target: IndexModel | None = None) -> np.ndarray:
        """The embedding of an image, by the model (and version) that built the index."""
        target = target or self.index_model()
        handler = self._query_model(target)
        info = handler.info()
        limits = DecodeLimits(max_bytes=self.settings.max_message_bytes, max_pixels=self.settings.max_pixels)
        try:
            pixels = decode_image(data, info.input_size, info.channels, limits)
        except DecodeError as exc:
            raise SearchError(f"the query image cannot be used: {exc}") from None
        return handler.predict_batch(pixels[None]).embeddings[0]

    def _query_model(self, target: IndexModel):
        with self._loading:
            if self._handler is None or self._handler_for != target:
                self._handler, self._handler_for = self._load_query_model(target), target
            return self._handler

    def _load_query_model(self, target: IndexModel):
        from streamdl.models.catalog import load_handler
        from streamdl.models.errors import ModelNotFound

        try:
            handler = load_handler(
                target.model_ref, state_dir=self.settings.state_dir, batch_size=1, weights=self.settings.weights
            )
            handler.load()
        except ModelNotFound as exc:
            raise NotFound(
                f"index {target.index} was built by model {target.model_name!r}, which cannot be loaded here: {exc}"
            ) from None
        from streamdl.streams.pipelines.images import embedding_space

        version = handler.info().version
        # a retrained head (version 2, ...) writes into its featurizer's index: the same vectors as the base
        same_space = target.index == f"{self.alias}-{embedding_space(handler.info())}".lower()
        if version != target.model_version and not same_space:
            raise SearchError(
                f"index {target.index} was built by {target.model_name} version {target.model_version}, but this "
                f"machine loads version {version}; vectors of different versions are not comparable"
            )
        return handler

    def _search(
        self,
        target: IndexModel,
        vector: np.ndarray,
        k: int,
        candidates: int,
        filters: Filters,
        exact: bool,
        exclude: Sequence[str],
        query_id: str | None,
    ) -> SearchResult:
        if len(vector) != target.dims:
            raise SearchError(f"the query vector has {len(vector)} dimensions; index {target.index} has {target.dims}")
        query = {
            "bool": {"filter": filters.clauses(), "must_not": [{"ids": {"values": list(exclude)}}] if exclude else []}
        }
        t0 = time.perf_counter()
        try:
            hits = (
                self._exact(target, vector, k, query)
                if exact
                else self._approximate(target, vector, k, candidates, query)
            )
        except ApiError as exc:
            raise SearchError(f"Elasticsearch refused the query: {exc.message}") from None
        return SearchResult(
            target.index,
            target.model_name,
            target.model_version,
            query_id,
            exact,
            1000 * (time.perf_counter() - t0),
            hits,
        )

    def _approximate(
        self, target: IndexModel, vector: np.ndarray, k: int, candidates: int, query: dict
    ) -> list[Neighbour]:
        resp = self.es.search(
            index=target.index,
            knn={
                "field": "embedding",
                "query_vector": vector.tolist(),
                "k": k,
                "num_candidates": candidates,
                "filter": query,
            },
            size=k,
            source=_SOURCE,
        )
        return [
            _neighbour(h["_source"], 2 * h["_score"] - 1) for h in resp["hits"]["hits"]
        ]  # cosine score = (1 + cos) / 2

    def _exact(self, target: IndexModel, vector: np.ndarray, k: int, query: dict) -> list[Neighbour]:
        """Every matching document's cosine similarity computed here; the true top ``k``."""
        unit = vector / (np.linalg.norm(vector) or 1.0)
        best: list[tuple[float, dict]] = []
        for hit in helpers.scan(
            self.es, index=target.index, query={"query": query}, _source=[*_SOURCE, "embedding"], size=1000
        ):
            v = np.asarray(hit["_source"]["embedding"], np.float32)
            best.append((float(unit @ (v / (np.linalg.norm(v) or 1.0))), hit["_source"]))
        best.sort(key=lambda pair: -pair[0])
        return [_neighbour(src, sim) for sim, src in best[:k]]


def check_sizes(k: int, num_candidates: int | None) -> int:
    """Validate ``k`` and ``num_candidates`` (before any model or index is touched); returns the candidates to use."""
    if not 1 <= k <= MAX_K:
        raise SearchError(f"k must be between 1 and {MAX_K}; got {k}")
    candidates = num_candidates or min(MAX_CANDIDATES, max(100, 10 * k))
    if not k <= candidates <= MAX_CANDIDATES:
        raise SearchError(f"num_candidates must be between k ({k}) and {MAX_CANDIDATES}; got {candidates}")
    return candidates


def _neighbour(src: dict[str, Any], similarity: float | None) -> Neighbour:
    thumb = src.get("thumbnail")
    return Neighbour(
        src["image_id"],
        None if similarity is None else round(float(similarity), 6),
        src.get("label"),
        src.get("true_label"),
        src.get("source"),
        src.get("model_version"),
        src.get("processed_time"),
        base64.b64decode(thumb) if thumb else None,
    )
