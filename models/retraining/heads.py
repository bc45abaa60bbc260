"""Classifier heads over embeddings: training with a small search on the validation split, and evaluation.

Two architectures: ``softmax`` (softmax regression: one Dense layer) and ``mlp`` (one hidden
layer of 64). Learning rate and L2 regularisation are chosen on the validation split, from a
grid or by random search. No Beam here: the heads are small and train in the driver.
"""

from __future__ import annotations

import io
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GRID = {"arch": ("softmax", "mlp"), "learning_rate": (3e-3, 1e-2), "l2": (1e-4, 1e-3)}
EPOCHS = 30
SEED = 0


@dataclass(frozen=True)
class Candidate:
    arch: str
    learning_rate: float
    l2: float

    def as_params(self) -> dict[str, str]:
        return {"arch": self.arch, "learning_rate": str(self.learning_rate), "l2": str(self.l2)}


@dataclass
class Trained:
    candidate: Candidate
    model: object
    val_accuracy: float
    seconds: float
    trials: list[dict] = field(default_factory=list)
    """Every candidate tried, with its validation accuracy."""


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    per_class: dict[str, dict[str, float]]
    """``{label: {"precision": p, "recall": r, "support": n}}``."""
    confusion: np.ndarray
    labels: tuple[str, ...]

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        out = {f"{prefix}accuracy": round(self.accuracy, 6)}
        for label, m in self.per_class.items():
            out[f"{prefix}precision_{label}"] = round(m["precision"], 6)
            out[f"{prefix}recall_{label}"] = round(m["recall"], 6)
        return out


def candidates(search: str = "grid", trials: int = 8, seed: int = SEED) -> list[Candidate]:
    """The grid (8 candidates), or ``trials`` random ones (log-uniform rates and L2)."""
    if search == "grid":
        return [Candidate(a, lr, l2) for a, lr, l2 in itertools.product(*GRID.values())]
    if search != "random":
        raise ValueError(f"search must be 'grid' or 'random'. Received: search={search!r}")
    rng = np.random.default_rng(seed)
    return [
        Candidate(str(rng.choice(GRID["arch"])), float(10 ** rng.uniform(-3.3, -1.5)), float(10 ** rng.uniform(-5, -2)))
        for _ in range(trials)
    ]


def build_head(arch: str, width: int, classes: int, l2: float):
    import keras
    from keras import layers, regularizers

    x = inputs = keras.Input(shape=(width,), dtype="float32", name="embedding")
    if arch == "mlp":
        x = layers.Dense(64, activation="relu", kernel_regularizer=regularizers.l2(l2), name="hidden")(x)
    elif arch != "softmax":
        raise ValueError(f"arch must be 'softmax' or 'mlp'. Received: arch={arch!r}")
    out = layers.Dense(classes, activation="softmax", kernel_regularizer=regularizers.l2(l2), name="probabilities")(x)
    return keras.Model(inputs, out, name=f"head_{arch}")


def train_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: int,
    tried: Sequence[Candidate],
    *,
    epochs: int = EPOCHS,
    seed: int = SEED,
    progress: Callable[[int, int, dict], None] | None = None,
) -> Trained:
    """Train every candidate on the training split; keep the best on the validation split."""
    import keras

    from streamdl.models.digits import _deterministic

    start = time.perf_counter()
    scale = _scale(x_train)
    best: Trained | None = None
    trials: list[dict] = []
    for i, cand in enumerate(tried):
        with _deterministic(seed):
            model = build_head(cand.arch, x_train.shape[1], classes, cand.l2)
            model.compile(optimizer=keras.optimizers.Adam(cand.learning_rate), loss="sparse_categorical_crossentropy")
            model.fit(x_train / scale, y_train, batch_size=64, epochs=epochs, verbose=0, shuffle=True)
            acc = float((model.predict(x_val / scale, batch_size=1024, verbose=0).argmax(axis=1) == y_val).mean())
        trials.append({**cand.as_params(), "val_accuracy": round(acc, 6)})
        if progress is not None:
            progress(i + 1, len(tried), trials[-1])
        if best is None or acc > best.val_accuracy:
            best = Trained(cand, model, acc, 0.0)
    assert best is not None
    best.model = _with_scale(best.model, scale)
    best.seconds, best.trials = time.perf_counter() - start, trials
    return best


def _scale(x: np.ndarray) -> float:
    """One scalar that brings the embeddings near unit size (kept inside the saved head)."""
    value = float(np.percentile(np.abs(x), 99)) if x.size else 1.0
    return value if value > 0 else 1.0


def _with_scale(model, scale: float):
    """``model`` behind a rescaling layer, so the saved head takes raw embeddings."""
    import keras

    inputs = keras.Input(shape=model.inputs[0].shape[1:], dtype="float32", name="embedding")
    return keras.Model(inputs, model(keras.layers.Rescaling(1.0 / scale, name="scale")(inputs)), name=model.name)


def evaluate(probabilities: np.ndarray, y: np.ndarray, labels: Sequence[str]) -> Evaluation:
    """Accuracy, per-class precision and recall, and the confusion matrix (rows: true, columns: predicted)."""
    k = len(labels)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    per_class = {}
    for j, label in enumerate(labels):
        tp = confusion[j, j]
        per_class[str(label)] = {
            "precision": float(tp / max(confusion[:, j].sum(), 1)),
            "recall": float(tp / max(confusion[j].sum(), 1)),
            "support": int(confusion[j].sum()),
        }
    accuracy = float((predicted == y).mean()) if len(y) else 0.0
    return Evaluation(accuracy, per_class, confusion, tuple(str(label) for label in labels))


def confusion_png(evaluation: Evaluation, title: str) -> bytes:
    """The confusion matrix as a PNG (Pillow only): counts in cells, darker = more."""
    from PIL import Image, ImageDraw

    k, cell, margin = len(evaluation.labels), 36, 60
    size = margin + k * cell + 10
    img = Image.new("RGB", (size, size + 20), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 5), title, fill="black")
    top = evaluation.confusion.max() or 1
    for i in range(k):
        draw.text((margin - 25, margin + i * cell + 12), evaluation.labels[i][:4], fill="black")
        draw.text((margin + i * cell + 12, margin - 18), evaluation.labels[i][:4], fill="black")
        for j in range(k):
            n = int(evaluation.confusion[i, j])
            shade = int(255 - 200 * n / top)
            box = (margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1, margin + (i + 1) * cell - 1)
            draw.rectangle(box, fill=(shade, shade, 255) if i == j else (255, shade, shade), outline="grey")
            if n:
                draw.text((box[0] + 8, box[1] + 12), str(n), fill="black")
    draw.text((10, size), "rows: true label, columns: predicted", fill="black")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def save_head(model, folder: Path, info: dict) -> Path:
    """``head.keras`` and ``info.json`` in ``folder`` (what :func:`streamdl.models.from_file.add_head` loads)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "head.keras")
    (folder / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return folder / "head.keras"
