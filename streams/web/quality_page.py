"""The quality page of ``streamdl serve``: live accuracy and drift per model version over time, for hosts without
Grafana. ``GET /quality`` is one self-contained page (inline CSS, JS and SVG, no library, no external URL) that
draws the JSON of ``GET /api/quality`` (:func:`~streamdl.streams.quality.history.quality_history`)."""

from __future__ import annotations

from aiohttp import web

from streamdl.streams.quality.history import MAX_POINTS, quality_history
from streamdl.streams.search import SearchError
from streamdl.streams.web.page import page_head

QUALITY_PARAMS = ("window", "since", "size")


async def quality_page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-cache"})


async def quality_data(request: web.Request) -> web.Response:
    """``?window=5m&since=now-1d&size=2000``: accuracy and drift points per version (400 for a bad parameter)."""
    from streamdl.streams.web.server import SEARCH_KEY, SETTINGS_KEY, _int, _run, _single

    params = _single(request.query.items())
    unknown = sorted(set(params) - set(QUALITY_PARAMS))
    if unknown:
        raise SearchError(f"unknown parameter {unknown[0]!r}; /api/quality takes {', '.join(QUALITY_PARAMS)}")
    size = _int(params, "size", 2000)
    if not 1 <= size <= MAX_POINTS:
        raise SearchError(f"size must be 1..{MAX_POINTS}; got {size}")
    window = params.get("window", "").strip() or None
    since = params.get("since", "").strip() or "now-1d"
    es, settings = request.app[SEARCH_KEY].es, request.app[SETTINGS_KEY]
    result = await _run(request, quality_history, es, settings, window=window, since=since, size=size)
    return web.json_response(result)


PAGE = (
    page_head("model quality")
    + r"""
  label { display: flex; flex-direction: column; gap: 3px; font-size: 12px; color: var(--muted); }
  input, select { font: inherit; padding: 4px 8px; border: 1px solid var(--line); border-radius: 5px; }
  button { font: inherit; padding: 6px 16px; border: 0; border-radius: 5px; background: var(--accent); color: #fff; }
  section { margin-top: 14px; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
  section h2 { margin: 0 0 6px; font-size: 15px; }
  svg { width: 100%; height: auto; display: block; }
  svg[hidden] { display: none; }
  svg text { font-size: 11px; fill: var(--muted); }
  .legend { display: flex; flex-wrap: wrap; gap: 6px 16px; margin-top: 6px; }
  .legend span { display: inline-flex; align-items: center; gap: 6px; }
  .legend i { width: 14px; height: 3px; display: inline-block; }
</style>
</head>
<body>
<header>
  <h1>Model quality</h1>
  <p>Live accuracy from late labels and drift without labels, per model version over time (the
     <code>kind: quality</code> and <code>kind: drift</code> reports of the quality index).
     <a href="./">Similar images</a></p>
</header>
<main>
<form id="form">
  <label>accuracy window <input id="window" type="text" placeholder="5m" size="6"></label>
  <label>since <input id="since" type="text" value="now-1d" size="10"></label>
  <label>drift signal <select id="signal"></select></label>
  <button id="show" type="submit">Show</button>
</form>
<div id="status" role="status"></div>
<div id="error" role="alert" hidden></div>
<svg id="svg-ns" hidden></svg>
<section id="accuracy"><h2>Live accuracy</h2><div class="chart"></div><div class="legend"></div></section>
<section id="drift"><h2>Drift</h2><div class="chart"></div><div class="legend"></div></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const SVG = $("svg-ns").namespaceURI;  // the SVG namespace, without writing its URL here
const COLOURS = ["#2f6fde", "#d92d20", "#039855", "#dc6803", "#7a5af8", "#0e9384", "#c11574", "#475467"];
let data = null;

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text != null) node.textContent = text;
  return node;
}

function chart(section, series, yLabel, fixedMax) {
  // series: [{version, colour, points: [[epoch ms, value]]}] -> an inline SVG line chart and its legend
  const box = $(section).querySelector(".chart"), legend = $(section).querySelector(".legend");
  const W = 960, H = 260, L = 52, R = 12, T = 10, B = 28;
  const all = series.flatMap((s) => s.points);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": yLabel });
  legend.replaceChildren();
  if (!all.length) {
    root.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no " + yLabel + " reports yet"));
    box.replaceChildren(root);
    return;
  }
  const x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  const yMax = fixedMax != null ? fixedMax : Math.max(...all.map((p) => p[1]), 1e-9) * 1.1;
  const sx = (x) => L + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (W - L - R);
  const sy = (y) => T + (1 - y / yMax) * (H - T - B);
  for (let i = 0; i <= 4; i++) {  // horizontal grid and y ticks
    const y = (yMax * i) / 4;
    root.appendChild(svg("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#eef0f3" }));
    root.appendChild(svg("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end" }, y.toPrecision(2)));
  }
  for (const [x, anchor] of [[x0, "start"], [x1, "end"]]) {
    const t = new Date(x).toISOString().replace("T", " ").slice(0, 19);
    root.appendChild(svg("text", { x: sx(x), y: H - 8, "text-anchor": anchor }, t));
  }
  for (const s of series) {
    const g = svg("g", { class: "series", "data-version": s.version });
    const pts = s.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
    g.appendChild(svg("polyline", { points: pts, fill: "none", stroke: s.colour, "stroke-width": 2 }));
    for (const p of s.points) {
      const dot = svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.colour });
      dot.appendChild(svg("title", {}, s.version + " " + new Date(p[0]).toISOString() + ": " + p[1].toFixed(4)));
      g.appendChild(dot);
    }
    root.appendChild(g);
    const item = document.createElement("span");
    item.dataset.version = s.version;
    const swatch = document.createElement("i");
    swatch.style.background = s.colour;
    item.append(swatch, s.version + " (" + s.points.length + " points)");
    legend.appendChild(item);
  }
  box.replaceChildren(root);
}

function draw() {
  if (!data) return;
  const signal = $("signal").value;
  const colour = (i) => COLOURS[i % COLOURS.length];
  const name = (v) => v.model_name + " v" + v.model_version;
  const accuracy = data.versions.map((v, i) => ({ version: name(v), colour: colour(i),
    points: v.accuracy.filter((p) => p.accuracy != null).map((p) => [Date.parse(p.t), p.accuracy]) }));
  const drift = data.versions.map((v, i) => ({ version: name(v), colour: colour(i),
    points: v.drift.filter((p) => p[signal] != null).map((p) => [Date.parse(p.t), p[signal]]) }));
  chart("accuracy", accuracy.filter((s) => s.points.length), "accuracy (" + data.window + ")", 1);
  chart("drift", drift.filter((s) => s.points.length), signal, null);
  $("status").textContent = data.versions.length + " version(s) since " + data.since + " in " + data.index;
}

async function load() {
  $("error").hidden = true;
  const query = new URLSearchParams();
  for (const key of ["window", "since"]) if ($(key).value.trim()) query.append(key, $(key).value.trim());
  const resp = await fetch("api/quality?" + query.toString());
  let body = null;
  try { body = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) {
    $("error").textContent = (body && body.error) || "HTTP " + resp.status;
    $("error").hidden = false;
    return;
  }
  data = body;
  const signal = $("signal");
  if (!signal.options.length) {
    for (const s of data.signals) signal.appendChild(new Option(s, s));
  }
  $("window").placeholder = data.window;
  draw();
}
$("signal").addEventListener("change", draw);
$("form").addEventListener("submit", (event) => { event.preventDefault(); load(); });
load();
</script>
</body>
</html>
"""
)
