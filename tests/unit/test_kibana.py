"""infra/kibana/saved_objects.ndjson agrees with the aliases, the mappings and docker-compose (no Kibana runs here).

The checks are plain functions returning a list of problems, so that the last tests can show each one
catches a broken copy of the file."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path, PurePosixPath

import pytest
import yaml

from streamdl.connectors.es_mappings import alerts_index, events_index, images_index
from streamdl.settings import ALIAS_NAMES, load_settings

ROOT = Path(__file__).resolve().parents[2]
KIBANA_DIR = ROOT / "infra" / "kibana"
NDJSON = KIBANA_DIR / "saved_objects.ndjson"
IMPORT_PATH = "/api/saved_objects/_import"

INDEX_REF = "kibanaSavedObjectMeta.searchSourceJSON.index"
TIME_FIELDS = {"images": "processed_time", "events": "ts", "alerts": "ts"}
# Field types Kibana can aggregate and sort on (not text, binary, dense_vector or disabled objects).
AGGREGATABLE = {
    "keyword",
    "date",
    "date_nanos",
    "boolean",
    "ip",
    "long",
    "integer",
    "short",
    "byte",
    "double",
    "float",
    "half_float",
    "scaled_float",
    "unsigned_long",
}


# --- Helpers --------------------------------------------------------------------------------------
def parse_ndjson(text: str) -> list[dict]:
    """Objects of an NDJSON text; raises ValueError on a blank line (other than a trailing newline) or a bad line."""
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    objects = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"line {number} is blank")
        value = json.loads(line)  # json.JSONDecodeError is a ValueError
        if not isinstance(value, dict):
            raise ValueError(f"line {number} is not a JSON object")
        objects.append(value)
    return objects


def flatten(properties: dict, prefix: str = "") -> dict[str, dict]:
    """Every field path of a mapping (``kafka.topic``, and ``kafka`` itself) to its mapping."""
    fields: dict[str, dict] = {}
    for name, spec in properties.items():
        fields[prefix + name] = spec
        if "properties" in spec:
            fields.update(flatten(spec["properties"], f"{prefix}{name}."))
    return fields


def field_type(spec: dict) -> str:
    return spec.get("type", "object")


def aggregatable(spec: dict) -> bool:
    return field_type(spec) in AGGREGATABLE and spec.get("index", True) is not False


def mappings_by_title(settings) -> dict[str, dict[str, dict]]:
    """The alias each data view should be titled with, to its flattened mapping."""
    mappings = {"images": images_index(dims=8), "events": events_index(), "alerts": alerts_index()}
    assert set(mappings) == set(ALIAS_NAMES), "a new alias needs its mapping here"
    return {settings.alias(name): flatten(m["mappings"]["properties"]) for name, m in mappings.items()}


def by_type(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o.get("type") == kind]


def search_source(obj: dict) -> dict:
    return json.loads(obj["attributes"].get("kibanaSavedObjectMeta", {}).get("searchSourceJSON", "{}"))


def data_view_of(obj: dict, objects: list[dict]) -> dict | None:
    """The data view an object's search source points at (through indexRefName and its references)."""
    ref_name = search_source(obj).get("indexRefName")
    if ref_name is None:
        return None
    ref = next((r for r in obj["references"] if r["name"] == ref_name), None)
    if ref is None or ref["type"] != "index-pattern":
        return None
    return next((o for o in by_type(objects, "index-pattern") if o["id"] == ref["id"]), None)


def vis_state(obj: dict) -> dict:
    return json.loads(obj["attributes"]["visState"])


# --- Checks (each returns its problems) --------------------------------------------------------
def structure_problems(objects: list[dict]) -> list[str]:
    problems = []
    seen = set()
    for i, obj in enumerate(objects):
        where = f"object {i} ({obj.get('type')}/{obj.get('id')})"
        for key, kind in (("id", str), ("type", str), ("attributes", dict), ("references", list)):
            if not isinstance(obj.get(key), kind) or (kind is str and not obj[key]):
                problems.append(f"{where}: {key} missing or not a {kind.__name__}")
        if (obj.get("type"), obj.get("id")) in seen:
            problems.append(f"{where}: duplicate type and id")
        seen.add((obj.get("type"), obj.get("id")))
        names = [r.get("name") for r in obj.get("references") or []]
        if len(names) != len(set(names)):
            problems.append(f"{where}: reference names repeat")
        for ref in obj.get("references") or []:
            if not all(isinstance(ref.get(k), str) and ref.get(k) for k in ("name", "type", "id")):
                problems.append(f"{where}: reference {ref} needs name, type and id")
    return problems


def reference_problems(objects: list[dict]) -> list[str]:
    problems = []
    defined = {(o["type"], o["id"]) for o in objects}
    for obj in objects:
        where = f"{obj['type']}/{obj['id']}"
        ref_names = {r["name"] for r in obj["references"]}
        for ref in obj["references"]:
            if (ref["type"], ref["id"]) not in defined:
                problems.append(f"{where}: reference {ref['name']} -> {ref['type']}/{ref['id']} is not in the file")
        source = search_source(obj)
        if "index" in source:
            problems.append(f"{where}: searchSourceJSON names an index directly instead of by indexRefName")
        if "indexRefName" in source and source["indexRefName"] not in ref_names:
            problems.append(f"{where}: indexRefName {source['indexRefName']} is not one of its references")
        if obj["type"] == "dashboard":
            panel_refs = {p.get("panelRefName") for p in json.loads(obj["attributes"]["panelsJSON"])}
            for name in ref_names - panel_refs:
                problems.append(f"{where}: reference {name} is used by no panel")
    return problems


def data_view_problems(objects: list[dict], settings) -> list[str]:
    problems = []
    mappings = mappings_by_title(settings)
    views = by_type(objects, "index-pattern")
    titles = [v["attributes"].get("title") for v in views]
    if sorted(titles) != sorted(mappings):
        problems.append(f"data view titles {sorted(titles)} are not the aliases {sorted(mappings)}")
    for name in ALIAS_NAMES:
        alias = settings.alias(name)
        for view in (v for v in views if v["attributes"].get("title") == alias):
            time_field = view["attributes"].get("timeFieldName")
            if time_field != TIME_FIELDS[name]:
                problems.append(f"data view {alias}: time field {time_field!r}, expected {TIME_FIELDS[name]!r}")
            if field_type(mappings[alias].get(time_field, {})) != "date":
                problems.append(f"data view {alias}: time field {time_field!r} is no date field of the mapping")
    return problems


def field_problems(objects: list[dict], settings) -> list[str]:
    """Fields that visualizations aggregate on and saved searches show or sort by exist in the data view's mapping."""
    problems = []
    mappings = mappings_by_title(settings)
    for obj in by_type(objects, "visualization") + by_type(objects, "search"):
        where = f"{obj['type']}/{obj['id']}"
        view = data_view_of(obj, objects)
        fields = mappings.get(view["attributes"]["title"], {}) if view else {}
        if obj["type"] == "visualization":
            state = vis_state(obj)
            if state.get("title") != obj["attributes"].get("title"):
                problems.append(f"{where}: visState title differs from the title")
            used = [(a["type"], a.get("params", {}).get("field")) for a in state.get("aggs", [])]
            used = [(kind, field) for kind, field in used if field is not None]
            if state.get("aggs") and view is None:
                problems.append(f"{where}: aggregations but no data view")
        else:
            if view is None:
                problems.append(f"{where}: no data view")
            used = [("sort", field) for field, _ in obj["attributes"].get("sort", [])]
            used += [("column", field) for field in obj["attributes"].get("columns", [])]
        for kind, field in used:
            if field not in fields:
                problems.append(
                    f"{where}: {kind} on {field!r}, not in the mapping of {view and view['attributes']['title']}"
                )
            elif kind != "column" and not aggregatable(fields[field]):
                problems.append(
                    f"{where}: {kind} on {field!r}, a {field_type(fields[field])} field Kibana cannot aggregate"
                )
    return problems


def dashboard_problems(objects: list[dict]) -> list[str]:
    problems = []
    dashboards = by_type(objects, "dashboard")
    if len(dashboards) != 1:
        return [f"expected one dashboard, found {len(dashboards)}"]
    dashboard = dashboards[0]
    attributes = dashboard["attributes"]
    panels = json.loads(attributes["panelsJSON"])
    json.loads(attributes.get("optionsJSON", "{}"))
    refs = {r["name"]: r for r in dashboard["references"]}
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        index = panel.get("panelIndex")
        ref = refs.get(panel.get("panelRefName"))
        if ref is None:
            problems.append(f"panel {index}: panelRefName {panel.get('panelRefName')!r} matches no reference")
        elif panel.get("type", ref["type"]) != ref["type"]:
            problems.append(f"panel {index}: type {panel['type']} but its reference is a {ref['type']}")
        grid = panel.get("gridData", {})
        if grid.get("i") != index:
            problems.append(f"panel {index}: gridData.i is {grid.get('i')!r}")
        if not (
            0 <= grid.get("x", -1)
            and grid.get("w", 0) > 0
            and grid.get("h", 0) > 0
            and grid["x"] + grid["w"] <= 48
            and grid.get("y", -1) >= 0
        ):
            problems.append(f"panel {index}: gridData {grid} is outside the 48-column grid")
            continue
        mine = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        if mine & cells:
            problems.append(f"panel {index}: overlaps another panel")
        cells |= mine
    indices = [p.get("panelIndex") for p in panels]
    if len(indices) != len(set(indices)):
        problems.append("panelIndex values repeat")
    return problems


# --- Fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def settings(monkeypatch):
    """The product's default settings (no STREAMDL_* variables, no .env)."""
    for key in list(os.environ):
        if key.startswith("STREAMDL_"):
            monkeypatch.delenv(key)
    return load_settings(env_file=None)


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return parse_ndjson(NDJSON.read_text(encoding="utf-8"))


def dashboard_objects(objects: list[dict]) -> list[dict]:
    """The objects the dashboard's panels point at."""
    dashboard = by_type(objects, "dashboard")[0]
    return [o for r in dashboard["references"] for o in objects if (o["type"], o["id"]) == (r["type"], r["id"])]


# --- The file -------------------------------------------------------------------------------
def test_file_is_ndjson_of_objects():
    text = NDJSON.read_text(encoding="utf-8")
    assert text.strip(), "empty file"
    assert not text.endswith("\n\n"), "blank line at the end"
    assert "\r" not in text
    assert len(parse_ndjson(text)) == len(text.rstrip("\n").split("\n"))


def test_every_object_has_id_type_attributes_and_references(objects):
    assert structure_problems(objects) == []
    assert {o["type"] for o in objects} <= {"index-pattern", "visualization", "search", "dashboard"}


def test_data_views_are_the_aliases_the_product_writes(objects, settings):
    assert data_view_problems(objects, settings) == []
    ids = {v["id"]: v["attributes"]["title"] for v in by_type(objects, "index-pattern")}
    assert ids == {settings.alias(n): settings.alias(n) for n in ALIAS_NAMES}, "stable ids, named after the aliases"


def test_every_reference_resolves_within_the_file(objects):
    assert reference_problems(objects) == []


def test_visualized_and_searched_fields_exist_in_the_mappings(objects, settings):
    assert field_problems(objects, settings) == []


def test_dashboard_panels_match_their_references(objects):
    assert dashboard_problems(objects) == []


def test_dashboard_shows_predictions_alerts_recent_alerts_and_dead_letters(objects, settings):
    panels = dashboard_objects(objects)
    charts = []
    for vis in by_type(panels, "visualization"):
        view = data_view_of(vis, objects)
        state = vis_state(vis)
        buckets = [(a["type"], a["params"].get("field")) for a in state["aggs"] if a.get("enabled", True)]
        charts.append((view and view["attributes"]["title"], state["type"], buckets))

    images, alerts = settings.alias("images"), settings.alias("alerts")
    assert any(
        title == images and ("date_histogram", "processed_time") in buckets and ("terms", "label") in buckets
        for title, _, buckets in charts
    ), f"no predictions-per-label chart on {images}: {charts}"
    assert any(
        title == alerts
        and ("date_histogram", "ts") in buckets
        and {("terms", "kind"), ("terms", "rule")} & set(buckets)
        for title, _, buckets in charts
    ), f"no alerts-over-time chart split by kind or rule: {charts}"

    searches = [s for s in by_type(panels, "search") if data_view_of(s, objects)["attributes"]["title"] == alerts]
    assert searches, "no saved search of alerts on the dashboard"
    assert searches[0]["attributes"]["sort"][0] == ["ts", "desc"], "recent alerts come first"


def test_dead_letters_are_a_note_not_an_index(objects, settings):
    from streamdl.streams.pipelines.metrics import DEAD_LETTERS

    metric = f"{DEAD_LETTERS.describe()[0].name}_total"
    notes = [
        vis_state(v) for v in by_type(dashboard_objects(objects), "visualization") if vis_state(v)["type"] == "markdown"
    ]
    assert any(
        settings.topic("dlq") in n["params"]["markdown"]
        and metric in n["params"]["markdown"]
        and "/metrics" in n["params"]["markdown"]
        for n in notes
    ), f"no markdown panel naming {settings.topic('dlq')} and {metric}"
    for view in by_type(objects, "index-pattern"):
        assert "dlq" not in view["attributes"]["title"], "dead letters are not in Elasticsearch"


# --- docker-compose ---------------------------------------------------------------------------
def test_compose_kibana_setup_imports_the_file_once_kibana_is_healthy():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    setup = services["kibana-setup"]
    assert setup["image"].startswith(("curlimages/curl:", "docker.elastic.co/kibana/kibana:"))
    assert setup["depends_on"]["kibana"]["condition"] == "service_healthy"
    assert setup.get("restart", "no") == "no", "a one-shot service"

    mounts = [v.split(":") for v in setup["volumes"]]
    targets = [m[1] for m in mounts if (ROOT / m[0]).resolve() == KIBANA_DIR and m[2:] == ["ro"]]
    assert targets, f"infra/kibana is not mounted read-only: {setup['volumes']}"

    def words(value) -> str:
        return " ".join(value) if isinstance(value, list) else (value or "")

    script = f"{words(setup.get('entrypoint'))} {words(setup.get('command'))}"
    assert f"http://kibana:5601{IMPORT_PATH}?overwrite=true" in script
    assert "kbn-xsrf: true" in script
    in_container = PurePosixPath(targets[0]) / NDJSON.name
    assert f"file=@{in_container}" in script, f"does not post {in_container} as the form field file"
    assert "-X POST" in script or "--form" in script or "-F " in script


# --- The checks catch broken files ----------------------------------------------------------------
def test_parse_ndjson_rejects_blank_lines_and_non_objects():
    assert parse_ndjson('{"a":1}\n{"b":2}\n') == [{"a": 1}, {"b": 2}]
    for bad in ('{"a":1}\n\n{"b":2}\n', '{"a":1}\n\n', "[1]\n", '{"a":\n'):
        with pytest.raises(ValueError):
            parse_ndjson(bad)


def test_checks_catch_broken_copies(objects, settings):
    def broken(mutate):
        copied = copy.deepcopy(objects)
        mutate(copied)
        return copied

    def one(items, kind, id_=None):
        return next(o for o in items if o["type"] == kind and (id_ is None or o["id"] == id_))

    def set_vis_field(items, old, new):
        for vis in by_type(items, "visualization"):
            state = vis_state(vis)
            for agg in state["aggs"]:
                if agg["params"].get("field") == old:
                    agg["params"]["field"] = new
            vis["attributes"]["visState"] = json.dumps(state)

    assert structure_problems(broken(lambda o: o[0].pop("references")))
    assert structure_problems(broken(lambda o: o.append(copy.deepcopy(o[0]))))
    assert data_view_problems(
        broken(lambda o: one(o, "index-pattern")["attributes"].update(title="streamdl-image")), settings
    )
    assert data_view_problems(
        broken(lambda o: one(o, "index-pattern", settings.alias("alerts"))["attributes"].update(timeFieldName="kind")),
        settings,
    )
    assert reference_problems(broken(lambda o: one(o, "dashboard")["references"][0].update(id="nope")))
    assert reference_problems(broken(lambda o: one(o, "search")["references"][0].update(name="other")))
    assert field_problems(broken(lambda o: set_vis_field(o, "label", "predicted_label")), settings)
    assert field_problems(broken(lambda o: set_vis_field(o, "label", "thumbnail")), settings)  # binary
    assert field_problems(
        broken(lambda o: one(o, "search")["attributes"].update(sort=[["processed_time", "desc"]])), settings
    )  # not an alerts field
    assert dashboard_problems(broken(lambda o: one(o, "dashboard")["references"][0].update(name="panel_x")))

    def overlap(items):
        dashboard = one(items, "dashboard")
        panels = json.loads(dashboard["attributes"]["panelsJSON"])
        panels[1]["gridData"].update(x=panels[0]["gridData"]["x"], y=panels[0]["gridData"]["y"])
        dashboard["attributes"]["panelsJSON"] = json.dumps(panels)

    assert dashboard_problems(broken(overlap))
