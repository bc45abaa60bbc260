"""Similar images against the live index: ``similar(image_or_id)`` and ``contact_sheet(...)``.

Both go through :class:`streamdl.streams.search.SimilaritySearch` (what ``streamdl similar`` and the web
page use): an image is featurized with the model and version that built the index; an id is an indexed
image, left out of its own neighbours. Each call opens its own search (and, for an image, loads the
model); for many queries keep a ``SimilaritySearch``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamdl.errors import StreamdlError
from streamdl.settings import Settings
from streamdl.streams.api.context import resolve
from streamdl.streams.search import Filters, SearchResult, SimilaritySearch

ImageOrId = str | bytes | os.PathLike | Any
"""Image bytes, an image file's path, a PIL image, or the id of an indexed image."""


@dataclass(frozen=True)
class Query:
    """What a query was: the image (bytes or a stored thumbnail), its caption, and the result."""

    result: SearchResult
    image: bytes | None
    caption: str


def similar(
    image_or_id: ImageOrId,
    k: int = 10,
    *,
    exact: bool = False,
    num_candidates: int | None = None,
    model: str | None = None,
    settings: Settings | None = None,
    **filters: str,
) -> SearchResult:
    """The ``k`` nearest indexed images (cosine on the embeddings), best first.

    ``filters``: ``label``, ``source``, ``since``, ``until``, ``model_version``
    (:class:`~streamdl.streams.search.Filters`; an unknown one is an error). ``exact=True`` scans every
    document instead of the HNSW graph. ``model``: search the index that model built.
    """
    return _query(image_or_id, k, exact, num_candidates, model, resolve(settings), filters).result


def contact_sheet(
    image_or_id: ImageOrId | SearchResult,
    k: int = 10,
    *,
    query_image: bytes | None = None,
    settings: Settings | None = None,
    **options: Any,
):
    """A PIL image (shown inline in Jupyter): the query outlined in red, then its neighbours with similarity
    and label. Give a query (as :func:`similar` takes, with the same options) or a :class:`SearchResult`
    (then ``query_image`` is drawn first, if given)."""
    from PIL import Image

    from streamdl.streams.web.contact_sheet import contact_sheet as sheet_png

    if isinstance(image_or_id, SearchResult):
        query = Query(image_or_id, query_image, f"query\n{image_or_id.query_id or ''}"[:24])
    else:
        exact, candidates, model = (options.pop(name, None) for name in ("exact", "num_candidates", "model"))
        query = _query(image_or_id, k, bool(exact), candidates, model, resolve(settings), options)
    return Image.open(io.BytesIO(sheet_png(query.result, query.image, query.caption)))


def _query(
    image_or_id: ImageOrId,
    k: int,
    exact: bool,
    num_candidates: int | None,
    model: str | None,
    settings: Settings,
    filters: dict[str, Any],
) -> Query:
    search = SimilaritySearch(settings, model=model)
    try:
        return run_query(
            search, image_or_id, k=k, num_candidates=num_candidates, filters=Filters.from_mapping(filters), exact=exact
        )
    finally:
        search.es.close()


def run_query(
    search: SimilaritySearch,
    image_or_id: ImageOrId,
    *,
    k: int = 10,
    num_candidates: int | None = None,
    filters: Filters = Filters(),
    exact: bool = False,
) -> Query:
    """One query through ``search``: an image (bytes, file, PIL image) is featurized, an id is looked up and
    left out of its own neighbours. ``streamdl similar`` and :func:`similar` both come here."""
    options = {"k": k, "num_candidates": num_candidates, "filters": filters, "exact": exact}
    data, name = _image_bytes(image_or_id)
    if data is not None:
        return Query(search.by_image(data, **options), data, f"query\n{name[:16]}")
    result = search.by_id(str(image_or_id), **options)
    stored = search.stored(str(image_or_id), result.index)
    label = stored.label if stored else "-"
    return Query(result, stored.thumbnail if stored else None, f"query  label {label}\n{str(image_or_id)[:16]}")


def _image_bytes(value: ImageOrId) -> tuple[bytes | None, str]:
    """``(bytes, name)`` for an image given as bytes, a file or a PIL image; ``(None, "")`` for an id."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), "image"
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue(), "image"
    if isinstance(value, os.PathLike) or (isinstance(value, str) and Path(value).is_file()):
        path = Path(value)
        try:
            return path.read_bytes(), path.name
        except OSError as exc:
            raise StreamdlError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(value, str):
        raise TypeError(f"give image bytes, a file path, a PIL image or an indexed id; got {type(value).__name__}")
    return None, ""
