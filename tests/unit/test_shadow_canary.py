"""Shadow and canary versions, and promotion on live evidence, without a broker: the hash split, the image
pipeline with fake models, the model-updates messages, the registry roles (real MLflow on SQLite), the
non-inferiority test and the shadow's labels, reports and alerts."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from streamdl.alert_rules import parse_rules
from streamdl.models.errors import RoleRefused
from streamdl.models.handler import BatchResult, ModelInfo
from streamdl.models.registry import Registry
from streamdl.records import InMessage
from streamdl.settings import load_settings
from streamdl.streams.agents.hot_swap import ModelFollower
from streamdl.streams.pipelines import metrics
from streamdl.streams.pipelines.images import ImagePipeline
from streamdl.streams.pipelines.roles import CANARY, SHADOW, Side, Sides, id_share, in_canary
from streamdl.streams.quality import stats
from streamdl.streams.quality.labels import Limits, join, shadow_join
from streamdl.streams.quality.promotion import judge
from streamdl.streams.quality.windows import QualityReport, reports

CHAMPION = ModelInfo(name="m", version="1", input_size=(8, 8), channels=1, embedding_size=3, labels=("dark", "light"))


class Model:
    """Embedding = (mean, min, max) of the pixels; ``light`` when the mean is over 127 (``flipped``: the opposite).
    ``featurizer`` names the embedding space it sits on; ``fails``: every call raises."""

    def __init__(self, version: str, *, flipped: bool = False, featurizer: str = "m-1", fails: bool = False) -> None:
        self.version, self.flipped, self.featurizer, self.fails = version, flipped, featurizer, fails
        self.calls: list[int] = []
        self.head_calls: list[int] = []

    def load(self) -> None: ...

    def info(self) -> ModelInfo:
        return dataclasses.replace(CHAMPION, version=self.version, extra={"featurizer": self.featurizer})

    def _probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        if self.fails:
            raise RuntimeError("broken head")
        light = (embeddings[:, 0] > 127).astype(np.float32)
        if self.flipped:
            light = 1 - light
        return np.stack([1 - light, light], 1)

    def predict_batch(self, images: np.ndarray) -> BatchResult:
        self.calls.append(len(images))
        flat = images.reshape(len(images), -1).astype(np.float32)
        embeddings = np.stack([flat.mean(1), flat.min(1), flat.max(1)], 1)
        return BatchResult(embeddings, self._probabilities(embeddings))

    def classify_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        self.head_calls.append(len(embeddings))
        return self._probabilities(embeddings)


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def batch(n: int, start: int = 0) -> list[InMessage]:
    return [
        InMessage(key=f"img-{i}".encode(), value=png(40 if i % 2 else 220), topic="t", partition=0, offset=i)
        for i in range(start, start + n)
    ]


@pytest.fixture
def pipeline() -> ImagePipeline:
    p = ImagePipeline(load_settings({"top_k": 2}, env_file=None), Model("1"))
    p.info = p.handler.info()
    p.alerts = []
    p.writer = SimpleNamespace(raise_alert=p.alerts.append)  # the model_refused alerts
    return p


# --- the canary's hash split -----------------------------------------------------------------------------
def test_the_canary_share_is_a_stable_hash_of_the_id():
    ids = [f"img-{i}" for i in range(20_000)]
    shares = [id_share(i) for i in ids]
    assert all(0 <= s < 1 for s in shares)
    assert id_share("img-0") == pytest.approx(0.642293, abs=1e-6)  # BLAKE2b, not Python's per-process salted hash
    chosen = [i for i in ids if in_canary(i, 0.1)]
    assert 0.09 < len(chosen) / len(ids) < 0.11
    assert set(chosen) <= {i for i in ids if in_canary(i, 0.2)}  # a larger fraction keeps the ids it had
    assert not [i for i in ids if in_canary(i, 0.0)]


# --- the image pipeline -----------------------------------------------------------------------------------
def test_a_shadow_on_the_same_featurizer_costs_one_head_call_and_is_never_served(pipeline):
    shadow = Model("2", flipped=True)
    pipeline.offer_role(SHADOW, shadow)
    shadow.calls.clear()  # the warm-up check
    out = pipeline.compute(batch(6))
    assert pipeline.handler.calls == [6] and shadow.head_calls == [6] and shadow.calls == []
    assert {d.body["model_version"] for d in out.documents} == {"1"} and len(out.scored) == 6
    by_id = {d.id: d.body for d in out.shadow}
    assert set(by_id) == set(out.shadow_predictions) == {f"img-{i}" for i in range(6)}
    one = by_id["img-0"]
    assert (one["role"], one["model_version"], one["served_version"]) == ("shadow", "2", "1")
    assert (one["label"], one["served_label"]) == ("dark", "light") and "embedding" not in one
    assert json.loads(out.shadow_predictions["img-0"])["model_version"] == "2"
    assert "shadow" in out.seconds and not pipeline.alerts


def test_a_shadow_on_another_featurizer_runs_its_whole_model(pipeline):
    shadow = Model("2", featurizer="other-7")
    pipeline.offer_role(SHADOW, shadow)
    shadow.calls.clear()
    out = pipeline.compute(batch(4))
    assert shadow.calls == [4] and shadow.head_calls == [] and len(out.shadow) == 4


def test_a_failing_shadow_leaves_the_champion_outputs_alone(pipeline):
    before = metrics.SIDE_ERRORS.labels(SHADOW)._value.get()
    pipeline.sides.offer(SHADOW, Side(SHADOW, Model("2", fails=True), Model("2").info(), True))
    out = pipeline.compute(batch(3))
    assert len(out.documents) == 3 and not out.shadow and not out.shadow_predictions and not out.dead
    assert metrics.SIDE_ERRORS.labels(SHADOW)._value.get() == before + 1


def test_a_canary_serves_exactly_its_hash_fraction_of_the_ids(pipeline):
    canary = Model("2", flipped=True)
    pipeline.offer_role(CANARY, canary, 0.5)
    messages = batch(40)
    out = pipeline.compute(messages)
    served = {d.id: d.body for d in out.documents}
    expected = {f"img-{i}" for i in range(40) if in_canary(f"img-{i}", 0.5)}
    assert 5 < len(expected) < 35
    assert {i for i, b in served.items() if b["model_version"] == "2"} == expected
    assert pipeline.handler.calls == [40] and canary.head_calls == [len(expected)]
    assert all(out.scored[i].model_version == served[i]["model_version"] for i in served)
    flipped = {i for i, b in served.items() if b["label"] != ("dark" if int(i[4:]) % 2 else "light")}
    assert flipped == expected  # the canary's own outputs, not the champion's relabelled
    again = pipeline.compute(messages)  # a replay: the same split
    assert {d.id for d in again.documents if d.body["model_version"] == "2"} == expected


def test_a_canary_needs_the_champion_featurizer_and_a_role_ends_between_batches(pipeline):
    pipeline.offer_role(CANARY, Model("2", featurizer="other-7"), 0.5)
    (alert,) = pipeline.alerts
    assert alert.kind == "model_refused" and "needs its featurizer m-1" in alert.evidence["reason"]
    assert {d.body["model_version"] for d in pipeline.compute(batch(20)).documents} == {"1"}
    pipeline.offer_role(SHADOW, Model("2"))
    assert pipeline.compute(batch(2)).shadow
    assert pipeline.settle_role(SHADOW, None) and not pipeline.compute(batch(2)).shadow


def test_a_side_that_becomes_the_champion_leaves_its_role():
    sides = Sides()
    sides.offer(SHADOW, Side(SHADOW, Model("2"), Model("2").info(), True))
    assert sides.settled(SHADOW, "2") and not sides.settled(SHADOW, "3") and not sides.settled(SHADOW, None)
    assert sides.apply("1") == [(SHADOW, None, "2")]
    assert sides.apply("2") == [(SHADOW, "2", None)] and sides.get(SHADOW) is None


def test_role_messages_on_model_updates_load_offer_and_end_a_role(pipeline):
    loaded: list[str] = []

    def load(settings, version):
        loaded.append(version)
        return Model(version, flipped=True)

    follower = ModelFollower(pipeline.settings, pipeline, load=load)
    name = pipeline.settings.model_name

    def send(**message) -> None:
        follower.handle(json.dumps({"name": name, **message}).encode())

    send(role="canary", version="2", fraction=0.3)
    send(role="canary", version="2", fraction=0.3)  # the same again (the topic is read from the start): no reload
    send(role="canary", version="3", fraction=7)  # a bad fraction: ignored
    send(role="nonsense", version="3")
    assert loaded == ["2"]
    out = pipeline.compute(batch(30))
    assert {d.id for d in out.documents if d.body["model_version"] == "2"} == {
        f"img-{i}" for i in range(30) if in_canary(f"img-{i}", 0.3)
    }
    send(role="canary", version="2", fraction=0.6)  # only the share changes: the loaded version stays
    assert loaded == ["2"]
    out = pipeline.compute(batch(30))
    assert {d.id for d in out.documents if d.body["model_version"] == "2"} == {
        f"img-{i}" for i in range(30) if in_canary(f"img-{i}", 0.6)
    }
    send(role="canary", version=None, fraction=0)
    assert {d.body["model_version"] for d in pipeline.compute(batch(30)).documents} == {"1"}
    send(version="5")  # a promotion still takes the champion's path
    assert loaded == ["2", "5"] and pipeline.compute(batch(1)).documents[0].body["model_version"] == "5"


# --- the registry -----------------------------------------------------------------------------------------
def test_registry_roles_and_what_they_refuse(tmp_path: Path):
    registry = Registry.from_settings(load_settings({"state_dir": tmp_path / "state"}, env_file=None))
    registry.ensure_base("m", {}, source=tmp_path.as_uri())
    for _ in range(2):
        registry.client.create_model_version("m", source=tmp_path.as_uri(), tags={"kind": "head"})
    assert registry.roles("m").shadow is None and registry.roles("nothing").canary is None
    with pytest.raises(RoleRefused, match="is the champion"):
        registry.set_role("m", SHADOW, "1")
    with pytest.raises(RoleRefused, match="0 < fraction < 1"):
        registry.set_role("m", CANARY, "2", 1.5)
    roles = registry.set_role("m", SHADOW, "2")
    assert (roles.shadow, roles.of("2")) == ("2", "shadow")
    with pytest.raises(RoleRefused, match="is the shadow already"):
        registry.set_role("m", CANARY, "2", 0.2)
    roles = registry.set_role("m", CANARY, "3", 0.25)
    assert (roles.canary, roles.fraction) == ("3", 0.25)
    registry.promote("m", "2")  # a promoted shadow leaves its role
    assert registry.roles("m") == type(roles)(shadow=None, canary="3", fraction=0.25)
    assert registry.set_role("m", CANARY, None).canary is None and registry.set_role("m", CANARY, None).fraction == 0


# --- promotion on live evidence -------------------------------------------------------------------------
def test_promotion_needs_labels_and_a_non_inferiority_test_taken_once_per_look():
    counts = {"1": (950, 1000), "2": (380, 400)}
    few = judge("2", "1", {"1": (950, 1000), "2": (40, 50)}, 100, 0.05, 0.05)
    assert not few.accepted and "version 2 has 50 joined live labels; --min-labels needs 100" in few.message
    worse = judge("2", "1", {"1": (950, 1000), "2": (300, 400)}, 100, 0.05, 0.05)
    assert not worse.accepted and "not shown to be within the margin" in worse.message and worse.look == 3
    ok = judge("2", "1", counts, 100, 0.05, 0.05)
    assert ok.accepted and ok.look == 3 and "z " in ok.message and "look 3" in ok.message
    again = judge("2", "1", counts, 100, 0.05, 0.05, after_look=3)
    assert not again.accepted and "comes when both versions have 800 labels" in again.message
    assert judge("2", "1", {"1": (950, 1000), "2": (760, 800)}, 100, 0.05, 0.05, after_look=3).look == 4


def test_promotion_stays_under_alpha_over_many_looks_and_promotes_an_equal_version():
    """Asked after every 25 labels up to 3,200: a candidate worse by exactly the margin (0.85 against 0.90) is
    promoted in fewer than alpha of the runs; an equal one (0.90 against 0.90) in nearly all."""
    rng = np.random.default_rng(11)
    runs = 300
    for accuracy, check in ((0.85, lambda rate: rate <= 0.05), (0.90, lambda rate: rate >= 0.9)):
        promoted, labels = 0, []
        for _ in range(runs):
            cand, champ = rng.random(3200) < accuracy, rng.random(3200) < 0.90
            last = 0
            for n in range(100, 3201, 25):
                counts = {"2": (int(cand[:n].sum()), n), "1": (int(champ[:n].sum()), n)}
                verdict = judge("2", "1", counts, 100, 0.05, 0.05, last)
                last = verdict.look or last
                if verdict.accepted:
                    promoted, labels = promoted + 1, [*labels, n]
                    break
        median = np.median(labels) if labels else None
        print(f"candidate {accuracy} against 0.90: promoted in {promoted / runs:.3f} of runs, median {median} labels")
        assert check(promoted / runs), (accuracy, promoted / runs)


def test_it_is_the_rollback_test_with_the_versions_swapped():
    direct = stats.worse_by_margin((950, 1000), (380, 400), -0.05, 0.05, 100)
    assert judge("2", "1", {"1": (950, 1000), "2": (380, 400)}, 100, 0.05, 0.05).message.endswith(
        f"z {direct.z:.2f}, critical {direct.critical:.2f} at level {direct.alpha:.4g}, look {direct.look})"
    )


# --- the shadow's labels, reports and alerts ---------------------------------------------------------------
def test_a_label_judges_the_shadow_prediction_in_a_document_of_its_own():
    limits = Limits(pending_ttl_secs=60, max_pending=10, max_labels_per_image=2, calibration_bins=10)
    label = {"image_id": "img-1", "label": "7", "label_event_id": "e1", "received_at": "2026-01-01T00:00:10Z"}
    champion = {
        "model_name": "m",
        "model_version": "1",
        "label": "7",
        "score": 0.9,
        "processed_time": "2026-01-01T00:00:05Z",
    }
    received = 1767225610.0  # 2026-01-01T00:00:10Z
    joined = join({**label, "duplicates": 1, "contradictions": 0, "other_labels": []}, champion, received, limits)
    shadow = {
        "model_name": "m",
        "model_version": "2",
        "label": "3",
        "score": 0.6,
        "processed_time": "2026-01-01T00:00:05Z",
    }
    doc_id, doc = shadow_join(joined, shadow, limits)
    assert doc_id == "img-1:v2" and doc["role"] == "shadow" and doc["model_version"] == "2"
    assert (doc["correct"], doc["predicted"], doc["duplicates"], doc["delay_secs"]) == (0, "3", 0, 5.0)


def bucket(version: str, n: int, shadow: int) -> dict:
    return {
        "key": version, "doc_count": n, "name": {"buckets": [{"key": "m"}]}, "correct": {"value": n // 2},
        "shadow": {"doc_count": shadow}, "duplicates": {"value": 0}, "contradictions": {"value": 0},
        "delay": {"values": {"50.0": 1.0, "95.0": 2.0}}, "truth": {"buckets": []}, "bins": {"buckets": []},
    }  # fmt: skip


def test_a_shadow_only_version_is_reported_but_never_alerted_on(monkeypatch):
    from streamdl.streams.quality.sink import QualitySink

    rows = reports({"aggregations": {"versions": {"buckets": [bucket("1", 40, 0), bucket("2", 40, 40)]}}}, "5m", 300)
    assert [(r.model_version, r.shadow, r.served) for r in rows] == [("1", 0, True), ("2", 40, False)]
    rules = parse_rules("rules:\n  - name: low\n    severity: critical\n    accuracy_below: 0.8\n", 300)
    sink = QualitySink(load_settings({}, env_file=None), rules=rules)
    published: list = []
    monkeypatch.setattr(sink, "_publish", lambda new, updated, stream="images": published.extend(new))
    sink._accuracy_alerts(rows, 1000.0)
    assert [(a.kind, a.model_version) for a in published] == [("accuracy_below", "1")]


def test_shadow_drift_is_reported_without_alerts_and_one_shadow_is_tracked(monkeypatch):
    from streamdl.records import Document
    from streamdl.streams.quality.sink import QualitySink

    rules = parse_rules("rules:\n  - name: d\n    severity: warning\n    drift_above: 0.0001\n", 300)
    now = [1000.0]
    sink = QualitySink(
        load_settings(
            {"drift_window_secs": 10, "drift_reference_size": 20, "drift_min_predictions": 10}, env_file=None
        ),
        rules=rules,
        clock=lambda: now[0],
    )
    indexed, published = [], []
    monkeypatch.setattr(sink, "_index_reports", lambda docs, *_: indexed.extend(docs))
    monkeypatch.setattr(sink, "_publish", lambda new, updated, stream="images": published.extend(new))

    def docs(version: str, label: str, n: int) -> list[Document]:
        return [Document(f"{version}-{i}", {"model_name": "m", "model_version": version, "label": label, "score": 0.9})
                for i in range(n)]  # fmt: skip

    sink._shadow_drift(docs("2", "a", 20))  # the reference
    now[0] += 10
    sink._shadow_drift(docs("2", "b", 15))  # a drifting window
    now[0] += 10
    sink._shadow_drift(docs("2", "b", 1))  # closes it
    assert [(d["model_version"], d["role"]) for d in indexed] == [("2", "shadow")] and indexed[0]["class_psi"] > 1
    assert not published
    sink._shadow_drift(docs("3", "a", 1))  # a new shadow: the old one's state goes
    assert list(sink.shadow_drift.versions) == [("m", "3")]


def test_the_table_marks_the_shadow_and_the_canary():
    from streamdl.streams.quality.compare import comparison

    def report(version: str, n: int, correct: int, shadow: int = 0) -> QualityReport:
        return QualityReport("m", version, "all", 0, n, correct, correct / n, 0.05, shadow=shadow)

    table = comparison(
        {"all": [report("1", 300, 290), report("2", 120, 13, shadow=120), report("3", 30, 28)]},
        {},
        serving="1",
        roles={"2": "shadow", "3": "canary@0.1", "4": "shadow"},
    )
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:-1]}
    assert rows["1"][1] == "*" and rows["2"][1:3] == ["shadow", "0.108"] and rows["3"][1] == "canary@0.1"
    assert rows["4"][1:3] == ["shadow", "-"]  # a shadow with no label yet still has its row
    assert "shadow: scored beside it, never served or alerted on" in table.splitlines()[-1]


class Answers:
    """Elasticsearch answering every search with the given per-version aggregation buckets."""

    def __init__(self, buckets: list[dict]) -> None:
        self.buckets = buckets

    def options(self, **_):
        return self

    def search(self, **_):
        return {"aggregations": {"versions": {"buckets": self.buckets}}}


class Versions:
    """A registry of versions 1 (the champion) and 2, recording the tags noted."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def show(self, name, version):
        return SimpleNamespace(version=str(version), tags=dict(self.tags))

    def champion(self, name):
        return SimpleNamespace(version="1")

    def note(self, name, version, key, value):
        self.tags[key] = value


def test_promotion_evidence_reads_the_live_counts_and_records_the_look_in_the_registry():
    from streamdl.streams.quality.promotion import promotion_evidence

    def counts(version: str, n: int, correct: int) -> dict:
        return {**bucket(version, n, 0), "correct": {"value": correct}}

    settings = load_settings({}, env_file=None)
    es, registry = Answers([counts("1", 1000, 950), counts("2", 400, 380)]), Versions()
    first = promotion_evidence(settings, es, registry, "2", min_labels=100, margin=0.05, alpha=0.05)
    assert first.accepted and registry.tags == {"promotion_look.1": "3"}
    again = promotion_evidence(settings, es, registry, "2", min_labels=100, margin=0.05, alpha=0.05)
    assert not again.accepted and "taken already" in again.message  # the same look is not taken twice
    assert promotion_evidence(settings, es, registry, "1", 100, 0.05, 0.05).message.endswith("the champion already")
