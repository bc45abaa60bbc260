"""``streamdl retrain``: retrain the served model's classifier head from the archive, register, gate, announce.

Stages (each timed and shown): *setup* (the registry and the current version's model), *read* (list the
archive, count labelled images; too few stops here), *embed* (the Beam pipeline,
:mod:`streamdl.streams.jobs.retrain_pipeline`), *train* (heads searched on
the validation split, :mod:`streamdl.models.retraining.heads`), *evaluate* (test split, against the current
version on the same images), *register* (MLflow run and model version), then the gate: promoted
only if test accuracy >= current - ``retrain_tolerance`` (current: the better of the current version's
accuracy on this run's test split and its recorded one), outputs finite and of the right shape;
on promotion the version is published to the model-updates topic, which the workers follow.

One run at a time per state folder (a file lock); ``--every`` repeats, skipping a run when no
label arrived since the last one.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamdl.errors import StreamdlError
from streamdl.settings import Settings

Say = Callable[[str], None]
LABELS_SEEN = "labels_seen"
"""Registered-model tag: how many label events the last run saw, and the latest one's time."""


class RetrainBusy(StreamdlError):
    """Another retraining run holds the lock."""


class TooFewLabels(StreamdlError):
    """The archive holds fewer labelled images than a run needs."""


@dataclass
class RetrainResult:
    status: str
    """``promoted``, ``registered`` (not promoted: see ``reason``) or ``skipped``."""
    reason: str
    version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


@contextmanager
def retrain_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``<state_dir>/retrain.lock``; :class:`RetrainBusy` naming the holder when it is taken."""
    path = Path(state_dir) / "retrain.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RetrainBusy(f"another retraining run is in progress ({holder}); this one does nothing") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def retrain(
    settings: Settings,
    *,
    since: float | None = None,
    until: float | None = None,
    beam_args: Sequence[str] = (),
    search: str = "grid",
    trials: int = 8,
    skip_unchanged: bool = False,
    say: Say = print,
) -> RetrainResult:
    """One retraining run under the lock (see the module docstring)."""
    with retrain_lock(settings.state_dir):
        return _run(settings, since, until, beam_args, search, trials, skip_unchanged, say)


def _run(settings: Settings, since, until, beam_args, search, trials, skip_unchanged, say: Say) -> RetrainResult:
    from streamdl.connectors.archive import archive_root, list_files
    from streamdl.models.registry import Registry

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    registry = Registry.from_settings(settings)
    name = settings.model_name
    champion, served, current_labels = _served(settings, registry)
    seconds["setup"] = time.perf_counter() - t
    t = time.perf_counter()
    root = archive_root(settings)
    image_files = [(root, f) for f in list_files(root, settings.topic("images"), since=since, until=until)]
    event_files = [(root, f) for f in list_files(root, settings.topic("events"))]  # a label may come after its image
    found, labels_seen = _count_labelled(image_files, event_files)
    seconds["read"] = time.perf_counter() - t
    say(
        f"read: {len(image_files)} image files, {len(event_files)} event files; {found} labelled images "
        f"({seconds['read']:.1f}s)"
    )
    if skip_unchanged and registry.model_tag(name, LABELS_SEEN) == labels_seen:
        return RetrainResult("skipped", "no new labels since the last run", seconds=seconds)
    if found < settings.retrain_min_labels:
        raise TooFewLabels(
            f"found {found} labelled images in the archive ({root}); a run needs at least "
            f"{settings.retrain_min_labels} (STREAMDL_RETRAIN_MIN_LABELS). Publish label events "
            "(type 'label', image_id, label) for archived images, then run again."
        )

    from streamdl.models.retraining import heads
    from streamdl.streams.jobs import retrain_pipeline as pipeline
    from streamdl.streams.jobs import runners
    from streamdl.streams.quality.reference import head_reference

    with tempfile.TemporaryDirectory(prefix="streamdl-retrain-") as tmp:
        t = time.perf_counter()
        out = str(Path(tmp) / "embedded" / "part")
        job_args = runners.prepare(settings, beam_args, say)
        counters = runners.run_job(job_args, lambda a: pipeline.run(image_files, event_files, served, out, a))
        data = _load_embedded(Path(tmp) / "embedded")
        seconds["embed"] = time.perf_counter() - t
        say(
            f"embed: {len(data['label'])} images through {name} v{champion.version} with RunInference "
            f"({seconds['embed']:.1f}s); counters {counters}"
        )

        t = time.perf_counter()
        train = data["split"] == "train"
        labels = sorted(set(data["label"][train].tolist()))
        if len(labels) < 2:
            raise TooFewLabels(f"the training split holds {len(labels)} class(es); a classifier needs at least 2")
        index = {label: i for i, label in enumerate(labels)}
        known = np.array([label in index for label in data["label"]])
        y = np.array([index.get(label, -1) for label in data["label"]])
        val, test = (data["split"] == "validation") & known, (data["split"] == "test") & known
        if not val.any() or not test.any():
            raise TooFewLabels(
                f"validation ({int(val.sum())}) and test ({int(test.sum())}) splits need images of known "
                "classes; label more images"
            )
        tried = heads.candidates(search, trials)
        trained = heads.train_head(
            data["embedding"][train],
            y[train],
            data["embedding"][val],
            y[val],
            len(labels),
            tried,
            progress=lambda i, n, trial: say(f"train: {i}/{n} {trial}"),
        )
        seconds["train"] = time.perf_counter() - t

        t = time.perf_counter()
        probabilities = np.asarray(trained.model.predict(data["embedding"][test], batch_size=1024, verbose=0))
        new = heads.evaluate(probabilities, y[test], labels)
        current_pred = np.array([current_labels[j] for j in data["probabilities"][test].argmax(axis=1)])
        current_acc = float((current_pred == data["label"][test]).mean())
        seconds["evaluate"] = time.perf_counter() - t
        reference = head_reference(trained.model, labels, data["embedding"][val], settings.drift_reservoir_size)
        return register_head(
            settings,
            registry,
            champion,
            trained,
            new,
            probabilities,
            current_acc,
            current_labels,
            labels_seen=labels_seen,
            since=since,
            until=until,
            counters=counters,
            seconds=seconds,
            say=say,
            reference=reference,
        )


def register_head(
    settings: Settings,
    registry,
    champion,
    trained,
    evaluation,
    probabilities: np.ndarray,
    current_acc: float,
    current_labels: Sequence[str],
    *,
    gate: bool = True,
    labels_seen: str | None = None,
    since: float | None = None,
    until: float | None = None,
    counters: dict[str, int] | None = None,
    seconds: dict[str, float] | None = None,
    say: Say = print,
    reference: dict | None = None,
) -> RetrainResult:
    """Judge a trained head against the champion, register it as the next version of ``settings.model_name``
    (MLflow run, artifacts, model version), then promote and announce it when the gate passes (``gate=False``:
    promote whatever the gate says, recording what it said). ``evaluation`` and ``probabilities`` are the
    head's on the test split; ``current_acc`` the champion's on the same images; ``reference`` its drift
    reference from the validation split (:mod:`~streamdl.streams.quality.reference`), saved with the version.
    ``streamdl retrain`` and the Python API's ``Head.register`` both end here."""
    name, labels = settings.model_name, list(evaluation.labels)
    counters, seconds = dict(counters or {}), dict(seconds or {})
    n = int(evaluation.confusion.sum())  # the test images the head was judged on
    recorded = champion.metrics.get("test_accuracy", champion.metrics.get("holdout_accuracy"))
    bar = max(current_acc, recorded) if recorded is not None else current_acc
    changes = _label_changes(current_labels, labels)
    say(
        f"evaluate: test accuracy {evaluation.accuracy:.4f} (current v{champion.version}: {current_acc:.4f} here, "
        f"{'-' if recorded is None else f'{recorded:.4f}'} recorded) on "
        f"{n} images; best {trained.candidate}{'; ' + changes if changes else ''}"
    )
    gate_ok, reason = _gate(evaluation.accuracy, bar, settings.retrain_tolerance, probabilities, n, len(labels))
    if not gate and not gate_ok:
        reason = f"promoted without the gate (gate=False); the gate said: {reason}"
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="streamdl-register-") as tmp:
        version = _register(
            settings, registry, name, champion, trained, evaluation, current_acc, labels, labels_seen or "",
            since, until, counters, {**seconds}, Path(tmp), changes, reason,
        )  # fmt: skip
    if reference is not None:
        version = registry.log_reference(version, reference)
    seconds["register"] = time.perf_counter() - t
    if labels_seen is not None:
        registry.set_model_tag(name, LABELS_SEEN, labels_seen)
    metrics = {
        "test_accuracy": evaluation.accuracy,
        "current_accuracy": current_acc,
        "val_accuracy": trained.val_accuracy,
    }
    if gate and not gate_ok:
        registry.note(name, version.version, "not_promoted", reason)
        return RetrainResult("registered", reason, version.version, metrics, seconds, counters)
    registry.promote(name, version.version, reason)
    announce(settings, registry.show(name, version.version))
    return RetrainResult("promoted", reason, version.version, metrics, seconds, counters)


def _served(settings: Settings, registry):
    """The champion version (the base model registered as version 1 on first use), how to load it in
    Beam, and its class names in output order."""
    from streamdl.models.catalog import load_handler
    from streamdl.models.digits import digits_model_dir
    from streamdl.streams.jobs.retrain_pipeline import ServedModel
    from streamdl.streams.quality.reference import digits_reference

    base = load_handler(
        settings.model_name, state_dir=settings.state_dir, batch_size=settings.max_batch_size, weights=settings.weights
    )
    base.load()
    info = base.info()
    metrics = {}
    info_file = digits_model_dir(settings.state_dir) / "info.json"
    if settings.model_name == "digits-cnn" and info_file.is_file():
        metrics["holdout_accuracy"] = float(json.loads(info_file.read_text())["holdout_accuracy"])
    reference = (lambda: digits_reference(settings)) if settings.model_name == "digits-cnn" else None
    registry.ensure_base(settings.model_name, metrics, source=_base_source(settings), reference=reference)
    champion = registry.champion(settings.model_name)
    head, labels = None, list(info.labels)
    if champion.kind == "head":
        from streamdl.models.registry import head_info

        folder = registry.head_folder(champion)
        head, labels = str(folder / "head.keras"), [str(label) for label in head_info(folder)["labels"]]
    return (
        champion,
        ServedModel(
            settings.model_name,
            str(settings.state_dir),
            head,
            settings.max_batch_size,
            info.input_size,
            info.channels,
            settings.max_message_bytes,
            settings.max_pixels,
        ),
        labels,
    )


def _base_source(settings: Settings) -> str:
    """Where the base model lives, as the registry records it."""
    from streamdl.models.digits import digits_model_dir
    from streamdl.models.keras_apps import keras_cache_dir

    folder = digits_model_dir(settings.state_dir) if settings.model_name == "digits-cnn" else Path(settings.model_name)
    # a Keras application by name: its weights live in the Keras cache (a models:/ URI is refused by MLflow)
    return (folder if folder.exists() else keras_cache_dir()).resolve().as_uri()


def _count_labelled(image_files: list, event_files: list) -> tuple[int, str]:
    """How many archived images have a label event, and a fingerprint of the label events seen
    (unreadable files are skipped here and counted by the pipeline)."""
    from streamdl.streams.jobs.retrain_pipeline import parse_label_event, read_rows

    image_ids = {row["key"] for element in image_files for row in read_rows(element, ["key"]) if row["key"]}
    labelled: set[str] = set()
    count, last = 0, 0.0
    for element in event_files:
        for row in read_rows(element, ["value", "timestamp_ms"]):
            label = parse_label_event(row["value"], (row["timestamp_ms"] or 0) / 1000)
            if label is not None:
                count, last = count + 1, max(last, label[1][0])
                if label[0].encode() in image_ids:
                    labelled.add(label[0])
    return len(labelled), f"{count}@{last:.3f}"


def _load_embedded(folder: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    tables = [pq.read_table(f) for f in files]
    rows = [r for t in tables for r in t.to_pylist()]
    rows.sort(key=lambda r: r["image_id"])  # deterministic order whatever the runner's sharding
    if not rows:
        raise TooFewLabels("no labelled image could be decoded and embedded")
    return {
        "image_id": np.array([r["image_id"] for r in rows]),
        "split": np.array([r["split"] for r in rows]),
        "label": np.array([r["label"] for r in rows]),
        "embedding": np.array([r["embedding"] for r in rows], np.float32),
        "probabilities": np.array([r["probabilities"] for r in rows], np.float32),
    }


def _gate(
    new_acc: float, current_acc: float, tolerance: float, probabilities: np.ndarray, n: int, k: int
) -> tuple[bool, str]:
    """Whether the new head may serve, and why. ``current_acc`` is the current version's accuracy on this
    run's test split, or its recorded test accuracy when higher: a run whose labels are wrong cannot
    pass by judging both versions on the same wrong labels."""
    if probabilities.shape != (n, k):
        return False, f"wrong output shape {probabilities.shape}, expected {(n, k)}"
    if not np.isfinite(probabilities).all():
        return False, "the new head gives non-finite outputs"
    if new_acc < current_acc - tolerance:
        return False, (
            f"test accuracy {new_acc:.4f} is below the current version's {current_acc:.4f} minus the "
            f"tolerance {tolerance}"
        )
    return True, f"test accuracy {new_acc:.4f} >= current {current_acc:.4f} - {tolerance}"


def _label_changes(current: Sequence[str], new: Sequence[str]) -> str:
    added, dropped = sorted(set(new) - set(current)), sorted(set(current) - set(new))
    parts = ([f"new classes {', '.join(added)}"] if added else []) + (
        [f"classes no longer labelled {', '.join(dropped)}"] if dropped else []
    )
    return "label set changed: " + "; ".join(parts) if parts else ""


def _register(
    settings: Settings,
    registry,
    name: str,
    champion,
    trained,
    evaluation,
    current_acc: float,
    labels: list[str],
    labels_seen: str,
    since,
    until,
    counters: dict[str, int],
    seconds: dict[str, float],
    tmp: Path,
    changes: str,
    reason: str,
):
    """Log the run to MLflow (parameters, metrics, artifacts, data window, versions, git commit); register the head."""
    from streamdl.models.retraining import heads

    mlflow = registry.mlflow
    mlflow.set_tracking_uri(registry.tracking_uri)
    next_version = str(max([int(v.version) for v in registry.versions(name)], default=0) + 1)
    head_dir = tmp / "head"
    heads.save_head(
        trained.model,
        head_dir,
        {
            "name": f"{name}-head",
            "version": next_version,
            "model_name": name,
            "model_version": next_version,
            "labels": labels,
        },
    )
    png = tmp / "confusion.png"
    png.write_bytes(heads.confusion_png(evaluation, f"{name} v{next_version}: test accuracy {evaluation.accuracy:.4f}"))
    with mlflow.start_run(experiment_id=registry.experiment_id(), run_name=f"{name}-v{next_version}") as run:
        mlflow.log_params(
            {
                **trained.candidate.as_params(),
                "search_trials": len(trained.trials),
                "labels": len(labels),
                "data_since": str(since),
                "data_until": str(until),
                "labels_seen": labels_seen,
                "base_version": champion.version,
            }
        )
        mlflow.log_metrics(
            {
                **evaluation.metrics(),
                "val_accuracy": trained.val_accuracy,
                "current_test_accuracy": current_acc,
                **{f"count_{k}": v for k, v in counters.items()},
                **{f"seconds_{k}": v for k, v in seconds.items()},
            }
        )
        mlflow.set_tags(
            {
                "git_commit": _git_commit(),
                "python": platform.python_version(),
                **_library_versions(),
                "label_changes": changes or "none",
                "gate": reason,
            }
        )
        mlflow.log_dict({"trials": trained.trials, "per_class": evaluation.per_class}, "search.json")
        mlflow.log_artifact(str(png))
        mlflow.log_artifacts(str(head_dir), artifact_path="head")
        run_id = run.info.run_id
    return registry.register_head(
        name,
        run_id,
        "head",
        {
            "test_accuracy": evaluation.accuracy,
            "val_accuracy": trained.val_accuracy,
            "current_test_accuracy": current_acc,
        },
        {"labels": ",".join(labels), "label_changes": changes or "none", "gate": reason},
    )


def announce(settings: Settings, version) -> None:
    """Publish a promoted version to the model-updates topic (key = model name), which workers follow."""
    from streamdl.connectors.kafka_producer import produce_all
    from streamdl.records import to_json

    message = {
        "name": version.name,
        "version": version.version,
        "kind": version.kind,
        "source": version.source,
        "metrics": version.metrics,
        "promoted_at": time.time(),
    }
    produce_all(settings, settings.topic("model-updates"), [(version.name, to_json(message), [])])


def announce_role(settings: Settings, name: str, role: str, version: str | None, fraction: float = 0.0) -> None:
    """Publish the ``shadow`` or ``canary`` version of ``name`` (``None``: the role is cleared) to the model-updates
    topic, key ``name:role`` (compaction keeps the latest of each role beside the champion's ``name``)."""
    from streamdl.connectors.kafka_producer import produce_all
    from streamdl.records import to_json

    message = {"name": name, "role": role, "version": version, "fraction": fraction, "announced_at": time.time()}
    produce_all(settings, settings.topic("model-updates"), [(f"{name}:{role}", to_json(message), [])])


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _library_versions() -> dict[str, str]:
    from streamdl.models.digits import _versions

    return {
        f"version_{k}": v for k, v in _versions("tensorflow", "keras", "apache-beam", "mlflow-skinny", "numpy").items()
    }
