"""``streamdl train events``: read events (a JSON Lines file or the sensor sample), train, register."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamdl.errors import StreamdlError
from streamdl.event_schema import InvalidEvent, parse_event
from streamdl.models.event_features import EventRecord
from streamdl.settings import Settings


def read_training_events(
    path: Path, settings: Settings, say: Callable[[str], None]
) -> tuple[list[EventRecord], list[str | None]]:
    """The valid, non-label events of a JSON Lines file as records and their labels;
    invalid lines are counted and named."""
    records: list[EventRecord] = []
    labels: list[str | None] = []
    refused: list[str] = []
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise StreamdlError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = parse_event(
                line,
                now=time.time(),
                max_bytes=settings.max_event_bytes,
                max_future_secs=settings.max_event_future_secs,
            )
        except InvalidEvent as exc:
            refused.append(f"line {number}: {exc.reason}: {exc.message}")
            continue
        if not event.is_label:
            records.append(EventRecord.of(event))
            labels.append(event.label)
    if refused:
        say(f"skipped {len(refused)} invalid line(s) of {path}; first: {refused[0]}")
    return records, labels


def train_events(
    settings: Settings,
    *,
    file: Path | None,
    sample: str | None,
    kind: str,
    name: str | None,
    epochs: int | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Train and register an event model; returns its ``info.json`` plus ``path``."""
    from tqdm import tqdm

    from streamdl.models.event_models import train_event_model

    if bool(file) == bool(sample):
        raise StreamdlError("give a JSON Lines FILE or --sample sensors (one of the two)")
    if sample:
        from streamdl.models.event_models import SENSOR_TRAIN_DAYS
        from streamdl.models.sensor_sample import sensor_events

        events = list(sensor_events(days=SENSOR_TRAIN_DAYS))
        records = [EventRecord.of(e) for e in events]
        labels: list[str | None] = [None] * len(records)
        name = name or "sensors-ae"
    else:
        records, labels = read_training_events(file, settings, say)
        name = name or Path(file).stem
    if kind == "classifier":
        keep = [i for i, label in enumerate(labels) if label is not None]
        if len(keep) < len(records):
            say(f"{len(records) - len(keep)} event(s) without a 'label' left out of classifier training")
        records, train_labels = [records[i] for i in keep], [labels[i] for i in keep]
    else:
        train_labels = None
    say(f"training {'an' if kind == 'autoencoder' else 'a'} {kind} '{name}' on {len(records)} events")
    bar = tqdm(unit="epoch", desc="train", leave=False, disable=not sys.stderr.isatty())

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        folder = train_event_model(
            records,
            kind=kind,
            name=name,
            state_dir=settings.state_dir,
            labels=train_labels,
            epochs=epochs,
            progress=progress,
        )
    except ValueError as exc:
        raise StreamdlError(f"cannot train {name!r}: {exc}") from None
    finally:
        bar.close()
    info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
    from streamdl.models.registry import Registry
    from streamdl.streams.quality.reference import event_reference

    metrics = {k: float(v) for k, v in (info.get("metrics") or {}).items() if isinstance(v, (int, float))}
    registry = Registry.from_settings(settings)
    version = registry.register_event_model(name, folder, metrics)
    registry.log_reference(version, event_reference(settings, records, folder))  # its drift reference
    say(f"registered {name} version {version.version} in the registry; it serves from the next worker start")
    return {**info, "path": str(folder), "registered_version": version.version}
