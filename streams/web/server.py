"""``streamdl serve``: a small web page and JSON API over the similarity search.

Routes (and nothing else; no file is served from disk):

- ``GET /``: one self-contained HTML page (inline CSS and JS, no external URL) to search by an
  uploaded image or an indexed image id, with filters, showing the neighbours as thumbnails.
- ``GET /api/similar?id=...`` and ``POST /api/similar`` (multipart, field ``image``): the
  neighbours as :meth:`SearchResult.as_json`.
- ``GET /api/index``: what is searched (alias, index, model, dimensions, document count).
- ``GET /api/browse?page=1&size=24``: what is indexed, newest first, a page at a time, with the same
  filters (``label``, ``source``, ``since``, ``until``, ``model_version``).
- ``GET /quality`` and ``GET /api/quality``: live accuracy and drift per model version over time
  (:mod:`~streamdl.streams.web.quality_page`).
- ``GET /metrics``: requests and latencies per route, Prometheus text (:mod:`~streamdl.streams.web.metrics`).

Access: on a loopback address (the default, 127.0.0.1) anyone on this machine may ask. On any other
address every request, ``/metrics`` included, needs the token of ``STREAMDL_WEB_TOKEN_FILE``
(``Authorization: Bearer <token>``, or HTTP Basic with the token as the password, which a browser asks
for), else 401; ``--insecure`` serves without one.

Errors are JSON ``{"error": "..."}`` with a 4xx status for bad input (400, 404 unknown id, 413 body
too large); an unexpected failure is a 500 with a short message, its traceback only in the log.
One :class:`SimilaritySearch` (and its model) serves the whole app; searches run in a thread pool,
since TensorFlow and the Elasticsearch client are synchronous.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from streamdl.errors import StreamdlError
from streamdl.settings import Settings
from streamdl.streams.search import Filters, SearchError, SimilaritySearch
from streamdl.streams.web.metrics import measure, metrics
from streamdl.streams.web.page import page_head
from streamdl.streams.web.quality_page import quality_data, quality_page

logger = logging.getLogger(__name__)

BODY_SLACK = 64 * 1024
"""Room for the multipart framing and form fields beside the largest accepted image."""
SEARCH_THREADS = 4
ROUTES = (
    "GET /, GET /api/similar?id=..., POST /api/similar (multipart field 'image'), GET /api/index, "
    "GET /api/browse?page=...&size=..., GET /quality, GET /api/quality?window=...&since=..., GET /metrics"
)
CONTROL_PARAMS = ("k", "num_candidates", "exact", "model")
"""Query parameters that are not filters; every other one goes through :meth:`Filters.from_mapping`."""

SEARCH_KEY = web.AppKey("search", SimilaritySearch)
BY_MODEL_KEY = web.AppKey("search_by_model", dict)
EXECUTOR_KEY = web.AppKey("executor", ThreadPoolExecutor)
SETTINGS_KEY = web.AppKey("settings", Settings)

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# --- the app ---------------------------------------------------------------------------
def create_app(
    settings: Settings, search: SimilaritySearch | None = None, *, token: str | None = None
) -> web.Application:
    """The web app; one ``search`` (created here unless given) answers every request; with ``token``, only
    requests that carry it (else 401)."""
    middlewares = [measure, _errors] if token is None else [measure, _errors, _require(token)]
    app = web.Application(client_max_size=settings.max_message_bytes + BODY_SLACK, middlewares=middlewares)
    app[SETTINGS_KEY] = settings
    app[SEARCH_KEY] = search or SimilaritySearch(settings)
    app[BY_MODEL_KEY] = {}
    app[EXECUTOR_KEY] = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="streamdl-search")
    app.router.add_get("/", page)
    app.router.add_get("/api/similar", similar_by_id)
    app.router.add_post("/api/similar", similar_by_image)
    app.router.add_get("/api/index", index_info)
    app.router.add_get("/api/browse", browse)
    app.router.add_get("/quality", quality_page)
    app.router.add_get("/api/quality", quality_data)
    app.router.add_get("/metrics", metrics)
    app.on_response_prepare.append(_add_headers)
    app.on_cleanup.append(_close)
    return app


async def _close(app: web.Application) -> None:
    app[EXECUTOR_KEY].shutdown(wait=False, cancel_futures=True)
    app[SEARCH_KEY].es.close()


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _require(token: str) -> Callable:
    """A middleware that answers 401 to a request without ``token`` (Bearer, or the Basic password)."""
    expected = token.encode()

    @web.middleware
    async def auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if hmac.compare_digest(_presented(request.headers.get("Authorization", "")), expected):
            return await handler(request)
        response = _error(401, "a token is required: Authorization: Bearer <token> (STREAMDL_WEB_TOKEN_FILE)")
        response.headers["WWW-Authenticate"] = 'Basic realm="streamdl", charset="UTF-8"'
        return response

    return auth


def _presented(header: str) -> bytes:
    """The token an ``Authorization`` header carries: a Bearer token, or a Basic password; else ``b""``."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip().encode()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return b""
    return b""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens for this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure as JSON ``{"error": ...}``: never a stack trace, never a 500 for bad input."""
    from elastic_transport import TransportError
    from elasticsearch import ApiError

    try:
        return await handler(request)
    except SearchError as exc:
        return _error(exc.status, str(exc))
    except StreamdlError as exc:
        return _error(400, str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return _error(
            413,
            f"the request is too large: {exc.text} "
            f"The largest image accepted is {request.app[SETTINGS_KEY].max_message_bytes} bytes.",
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return _error(404, f"no such page: {request.path}; the routes are {ROUTES}")
        if exc.status == 405:
            return _error(405, f"{request.method} is not allowed on {request.path}; the routes are {ROUTES}")
        return _error(exc.status, exc.text or exc.reason)
    except ApiError as exc:
        logger.warning("Elasticsearch refused a request for %s: %s", request.path, exc)
        return _error(502, f"Elasticsearch error: {exc.message}")
    except TransportError as exc:
        logger.warning("Elasticsearch unreachable for %s: %s", request.path, exc)
        return _error(503, "Elasticsearch is not reachable; is the stack running? ('streamdl stack status')")
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("unexpected error answering %s %s", request.method, request.path)
        return _error(500, "internal error; the server log has the details")


async def _run(request: web.Request, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn`` in the app's thread pool (it blocks on TensorFlow or Elasticsearch)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[EXECUTOR_KEY], lambda: fn(*args, **kwargs))


# --- parameters ------------------------------------------------------------------------
def _int(params: Mapping[str, str], name: str, default: int | None) -> int | None:
    value = params.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SearchError(f"{name} must be a whole number; got {value!r}") from None


def _bool(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SearchError(f"{name} must be true or false; got {value!r}")


def _search_args(params: Mapping[str, str]) -> dict[str, Any]:
    """k, num_candidates, exact and the filters; an unknown parameter is an error (400)."""
    return {
        "k": _int(params, "k", 10),
        "num_candidates": _int(params, "num_candidates", None),
        "exact": _bool(params, "exact"),
        "filters": Filters.from_mapping({name: value for name, value in params.items() if name not in CONTROL_PARAMS}),
    }


def _single(pairs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise SearchError(f"parameter {key!r} is given more than once")
        out[key] = value
    return out


def _searcher(request: web.Request, model: str | None) -> SimilaritySearch:
    """The search over the index ``model`` built (``?model=``), or the alias's (none given); one per model,
    kept for the life of the app (a handful of models at most: one per index behind the alias's name)."""
    default = request.app[SEARCH_KEY]
    if not model:
        return default
    by_model = request.app[BY_MODEL_KEY]
    if model not in by_model:
        by_model[model] = SimilaritySearch(default.settings, es=default.es, alias=default.alias, model=model)
    return by_model[model]


# --- handlers ----------------------------------------------------------------------------
async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-cache"})


async def similar_by_id(request: web.Request) -> web.Response:
    params = _single(request.query.items())
    image_id = params.pop("id", "").strip()
    if not image_id:
        raise SearchError("give the id of an indexed image (?id=...), or POST an image (multipart field 'image')")
    args = _search_args(params)
    search = _searcher(request, params.get("model", "").strip())
    result = await _run(request, search.by_id, image_id, **args)
    body = result.as_json()
    query = await _run(request, search.stored, image_id, result.index)
    body["query"] = (
        None if query is None else {k: v for k, v in query.as_json().items() if k in ("image_id", "label", "thumbnail")}
    )
    return web.json_response(body)


async def similar_by_image(request: web.Request) -> web.Response:
    if request.content_type != "multipart/form-data":
        raise SearchError(
            f"POST the image as multipart/form-data (field 'image'); got {request.content_type or 'no content type'}"
        )
    form = await request.post()  # enforces client_max_size: 413
    pairs = list(request.query.items()) + list(form.items())
    images = [value for key, value in pairs if key == "image"]
    if not images:
        raise SearchError("no image: POST it as multipart/form-data in the field 'image'")
    if len(images) > 1:
        raise SearchError("give one image (field 'image' is given more than once)")
    if not isinstance(images[0], web.FileField):
        raise SearchError("the field 'image' must be a file upload")
    files = [key for key, value in pairs if key != "image" and not isinstance(value, str)]
    if files:
        raise SearchError(f"parameter {files[0]!r} must be a plain form field, not a file")
    fields = _single((key, value) for key, value in pairs if key != "image")
    args = _search_args(fields)
    search = _searcher(request, str(fields.get("model", "")).strip())
    result = await _run(request, search.by_image, images[0].file.read(), **args)
    return web.json_response(result.as_json())


async def browse(request: web.Request) -> web.Response:
    params = _single(request.query.items())
    page, size = _int(params, "page", 1), _int(params, "size", 24)
    filters = Filters.from_mapping({k: v for k, v in params.items() if k not in ("page", "size", "model")})
    search = _searcher(request, params.get("model", "").strip())
    result = await _run(request, search.browse, filters, page=page, size=size)
    return web.json_response(result.as_json())


async def index_info(request: web.Request) -> web.Response:
    search = _searcher(request, _single(request.query.items()).get("model", "").strip())

    def info() -> dict[str, Any]:
        target = search.index_model()
        count = search.es.count(index=target.index)["count"]
        return {
            "alias": search.alias,
            "index": target.index,
            "model_name": target.model_name,
            "model_version": target.model_version,
            "dims": target.dims,
            "documents": count,
            "models": search.indexed_models(),
        }

    return web.json_response(await _run(request, info))


# --- the command ---------------------------------------------------------------------------
def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8088, *, insecure: bool = False) -> int:
    """Run the web app until SIGINT/SIGTERM; off loopback only with a token (or ``insecure``)."""
    if not 0 <= port < 65536:
        raise StreamdlError(f"--port must be 0..65535; got {port}")
    token = settings.web_token.get_secret_value() if settings.web_token else None
    if token is None and not is_loopback(host) and not insecure:
        raise StreamdlError(
            f"--host {host} is reachable from other machines: set a token with STREAMDL_WEB_TOKEN_FILE "
            "(a file holding it), or pass --insecure to serve without one"
        )
    if token is None and not is_loopback(host):
        logger.warning("serving on %s without a token (--insecure): anyone who reaches the port can search", host)
    app = create_app(settings, token=token)

    def say(msg: str) -> None:
        print(msg.replace("http://0.0.0.0", "http://<this host>"), file=sys.stderr, flush=True)

    logger.info("searching %s at %s", settings.alias("images"), settings.es_url)
    try:
        web.run_app(app, host=host, port=port, print=say, access_log=logger if settings.log_level == "DEBUG" else None)
    except OSError as exc:
        raise StreamdlError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return 0


PAGE = (
    page_head("similar images")
    + r"""
  fieldset { border: 0; margin: 0; padding: 0; display: flex; gap: 12px; align-items: flex-end; flex-wrap: wrap; }
  label { display: flex; flex-direction: column; gap: 3px; font-size: 12px; color: var(--muted); }
  label.inline { flex-direction: row; align-items: center; gap: 6px; font-size: 14px; color: var(--fg);
                 padding-bottom: 6px; }
  input[type=text], input[type=number] { font: inherit; padding: 5px 8px; border: 1px solid var(--line);
                                         border-radius: 5px; }
  input[type=number] { width: 5.5em; }
  #image-id { width: 22em; }
  .or { color: var(--muted); padding-bottom: 7px; }
  button { font: inherit; padding: 7px 18px; border: 0; border-radius: 5px; background: var(--accent); color: #fff;
           cursor: pointer; }
  button:disabled { opacity: .6; cursor: progress; }
  #grid { margin-top: 14px; display: grid; grid-template-columns: repeat(auto-fill, minmax(132px, 1fr)); gap: 12px; }
  .tile, .query { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px; text-align: center;
                  overflow: hidden; }
  .query { border: 2px solid var(--accent); }
  .tile img, .query img { width: 112px; height: 112px; object-fit: contain; image-rendering: pixelated;
                          background: #eef0f3; border-radius: 4px; }
  .noimg { width: 112px; height: 112px; margin: 0 auto; display: flex; align-items: center; justify-content: center;
           color: var(--muted); background: #eef0f3; border-radius: 4px; }
  .sim { font-weight: 600; font-variant-numeric: tabular-nums; margin-top: 4px; }
  .lab { color: var(--fg); }
  .iid, .src { color: var(--muted); font-size: 11px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  .src { color: var(--fg); }
  .tile { cursor: pointer; }
  .tile:hover { border-color: var(--accent); }
  #pager { margin-top: 14px; display: flex; gap: 12px; align-items: center; }
  #pager[hidden], #model-choice[hidden] { display: none; }
  select { font: inherit; padding: 4px 6px; border: 1px solid var(--line); border-radius: 5px; }
  #pager button { background: #fff; color: var(--accent); border: 1px solid var(--accent); padding: 5px 14px; }
</style>
</head>
<body>
<header>
  <h1>Similar images</h1>
  <p>Nearest neighbours in the streamdl image index (cosine similarity of the model's embeddings). Without a
     query: what is indexed, newest first; click an image to search from it. <a href="quality">Model quality</a></p>
</header>
<main>
  <form id="form" autocomplete="off">
    <fieldset>
      <label>Upload an image<input type="file" id="file" accept="image/*"></label>
      <span class="or">or</span>
      <label>an indexed image id<input type="text" id="image-id" placeholder="e.g. digits-0042"
                                       spellcheck="false"></label>
    </fieldset>
    <fieldset>
      <label>k<input type="number" id="k" value="10" min="1" max="1000"></label>
      <label>label<input type="text" id="label" size="6"></label>
      <label>source<input type="text" id="source" size="14"></label>
      <label>since<input type="text" id="since" size="8" placeholder="2h, 7d, ISO"></label>
      <label id="model-choice" hidden>index (model)<select id="model"></select></label>
      <label class="inline"><input type="checkbox" id="exact"> exact</label>
      <button type="submit" id="search">Search</button>
    </fieldset>
  </form>
  <div id="error" role="alert" hidden></div>
  <div id="status" aria-live="polite"></div>
  <div id="grid"></div>
  <nav id="pager" hidden><button type="button" id="prev">&larr; Newer</button><span id="page-info"></span>
    <button type="button" id="next">Older &rarr;</button></nav>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const fileInput = $("file"), idInput = $("image-id"), grid = $("grid"), statusBox = $("status"), errorBox = $("error");
let searched = false;

// one query at a time: choosing a file clears the id and typing an id clears the file
fileInput.addEventListener("change", () => { if (fileInput.files.length) idInput.value = ""; });
idInput.addEventListener("input", () => { if (idInput.value) fileInput.value = ""; });

function dataUrl(file) {
  return new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => resolve(null);
    reader.readAsDataURL(file);
  });
}

function showError(message) { errorBox.textContent = message; errorBox.hidden = false; }
function clearError() { errorBox.textContent = ""; errorBox.hidden = true; }

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function picture(src, alt) {
  if (!src) return el("div", "noimg", "no image");
  const img = el("img"); img.src = src; img.alt = alt; return img;
}

function jpeg(b64) { return b64 ? "data:image/jpeg;base64," + b64 : null; }

function fileName(source) { return source ? String(source).split("/").pop() : "no source"; }

function tile(n, caption) {
  const t = el("div", "tile");
  t.dataset.id = n.image_id;
  t.dataset.similarity = n.similarity == null ? "" : String(n.similarity);
  t.dataset.label = n.label == null ? "" : String(n.label);
  t.dataset.source = n.source == null ? "" : String(n.source);
  t.dataset.time = n.processed_time || "";
  t.title = n.image_id + (n.source ? "\n" + n.source : "") + (n.processed_time ? "\n" + n.processed_time : "") +
    "\nclick: images similar to this one";
  t.appendChild(picture(jpeg(n.thumbnail), "image " + n.image_id));
  t.appendChild(el("div", "sim", caption));
  t.appendChild(el("div", "lab", n.label != null ? "label " + n.label : "no label"));
  t.appendChild(el("div", "src", fileName(n.source)));
  t.appendChild(el("div", "iid", n.image_id));
  t.addEventListener("click", () => {  // search from this image
    fileInput.value = ""; idInput.value = n.image_id; $("form").requestSubmit();
  });
  return t;
}

function filterParams() {
  return { label: $("label").value.trim(), source: $("source").value.trim(), since: $("since").value.trim(),
           model: $("model").value };
}

function offerModels(models) {  // a choice only where several indices (models or versions) exist
  const select = $("model");
  select.replaceChildren();
  const names = [...new Set(models.map((m) => m.model_name).filter((n) => n))];
  if (names.length < 2) return;
  const current = models.find((m) => m.current);
  for (const name of names) {
    const option = el("option", null, name + (current && current.model_name === name ? " (current)" : ""));
    option.value = current && current.model_name === name ? "" : name;
    select.appendChild(option);
  }
  $("model-choice").hidden = false;
}
$("model").addEventListener("change", () => { searched = true; fileInput.value = ""; idInput.value = ""; browse(1); });

let browsing = 1;
async function browse(pageNo, onlyIfIdle = false) {
  if (!onlyIfIdle) clearError();
  const query = new URLSearchParams({ page: String(pageNo), size: "24" });
  for (const [key, value] of Object.entries(filterParams())) if (value) query.append(key, value);
  const resp = await fetch("api/browse?" + query.toString());
  if (onlyIfIdle && searched) return;  // the first page came after a search had started: the search wins
  if (!resp.ok) { showError(await reason(resp)); return; }
  const result = await resp.json();
  if (onlyIfIdle && searched) return;
  browsing = result.page;
  grid.replaceChildren(...result.images.map((n) => tile(n, (n.processed_time || "").replace("T", " ").slice(0, 19))));
  statusBox.textContent = result.total + " images in " + result.index + ", newest first" +
    (result.total ? ": page " + result.page + " of " + result.pages : "");
  $("page-info").textContent = "page " + result.page + " of " + Math.max(result.pages, 1);
  $("prev").disabled = result.page <= 1;
  $("next").disabled = result.page >= result.pages;
  $("pager").hidden = false;
}
$("prev").addEventListener("click", () => browse(browsing - 1));
$("next").addEventListener("click", () => browse(browsing + 1));

function render(result, query) {
  $("pager").hidden = true;
  grid.replaceChildren();
  const q = el("div", "query");
  q.appendChild(picture(query.src, "query image"));
  q.appendChild(el("div", "sim", "query"));
  q.appendChild(el("div", "lab", query.label != null ? "label " + query.label : "\u00a0"));
  q.appendChild(el("div", "iid", query.id || query.name || "uploaded image"));
  if (query.id) q.title = query.id;
  grid.appendChild(q);
  for (const n of result.neighbours) grid.appendChild(tile(n, Number(n.similarity).toFixed(3)));
  statusBox.textContent = result.neighbours.length + " neighbours in " + result.took_ms + " ms (" +
    (result.exact ? "exact scan" : "approximate kNN") + ", index " + result.index + ", model " + result.model_name +
    " v" + result.model_version + ")";
}

async function reason(resp) {
  try { const body = await resp.json(); if (body && body.error) return body.error; } catch (e) { /* not JSON */ }
  return "HTTP " + resp.status + " " + resp.statusText;
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  searched = true;
  clearError();
  grid.replaceChildren();  // what was shown goes now: the tiles that appear next are this query's
  const file = fileInput.files[0], id = idInput.value.trim();
  if (!file && !id) { await browse(1); return; }  // no query: browse what the filters keep
  const params = { k: $("k").value.trim(), ...filterParams() };
  if ($("exact").checked) params.exact = "true";
  let request;
  if (file) {
    const form = new FormData();
    form.append("image", file, file.name);
    for (const [key, value] of Object.entries(params)) if (value) form.append(key, value);
    request = fetch("api/similar", { method: "POST", body: form });
  } else {
    const query = new URLSearchParams({ id: id });
    for (const [key, value] of Object.entries(params)) if (value) query.append(key, value);
    request = fetch("api/similar?" + query.toString());
  }
  const button = $("search");
  button.disabled = true;
  statusBox.textContent = "Searching\u2026";
  grid.setAttribute("aria-busy", "true");
  try {
    const resp = await request;
    if (!resp.ok) { grid.replaceChildren(); statusBox.textContent = ""; showError(await reason(resp)); return; }
    const result = await resp.json();
    const query = file ? { src: await dataUrl(file), label: null, id: null, name: file.name }
                       : { src: result.query ? jpeg(result.query.thumbnail) : null,
                           label: result.query ? result.query.label : null, id: id };
    render(result, query);
  } catch (e) {
    grid.replaceChildren(); statusBox.textContent = "";
    showError("The search failed: " + e);
  } finally {
    button.disabled = false;
    grid.removeAttribute("aria-busy");
  }
});

fetch("api/index").then(async (resp) => {
  if (searched) return;
  if (resp.ok) {
    const info = await resp.json();
    offerModels(info.models || []);
    await browse(1, true);
    if (searched) return;
    statusBox.textContent = info.documents + " images in " + info.index + " (model " + info.model_name +
      " v" + info.model_version + ", " + info.dims + " dimensions), newest first: click one to search from it";
  } else {
    statusBox.textContent = await reason(resp);
  }
}).catch(() => {});
</script>
</body>
</html>
"""
)
