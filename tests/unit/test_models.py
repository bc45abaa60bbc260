"""The model layer: digits CNN, the generic Keras handler, Keras applications and model files (no services)."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from streamdl.errors import StreamdlError
from streamdl.models.catalog import available_models, load_handler
from streamdl.models.digits import digit_to_array, digit_to_png, digits_model_dir, ensure_digits_model, split_digits
from streamdl.models.errors import ModelNotFound
from streamdl.models.handler import ModelHandler
from streamdl.models.keras_apps import APPLICATIONS, imagenet_labels
from streamdl.models.keras_handler import KerasImageHandler

RNG = np.random.default_rng(1)
PROGRESS: list[tuple[int, int]] = []
pytestmark = pytest.mark.filterwarnings(  # raised inside keras' model.save with numpy 2, not by streamdl
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


# --- Fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder whose digits model is trained once per test run."""
    state = tmp_path_factory.mktemp("state")
    started = time.perf_counter()
    ensure_digits_model(state, progress=lambda done, total: PROGRESS.append((done, total)))
    print(f"\ndigits-cnn trained in {time.perf_counter() - started:.1f}s")
    return state


@pytest.fixture(scope="session")
def digits_handler(state_dir: Path) -> KerasImageHandler:
    handler = load_handler("digits-cnn", state_dir=state_dir, batch_size=32)
    handler.load()
    return handler


@pytest.fixture(scope="session")
def holdout() -> tuple[np.ndarray, np.ndarray]:
    _, x_holdout, _, y_holdout = split_digits()
    return x_holdout, y_holdout


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Keras cache folder."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras" / "models"


def _assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to 0.1% of the largest expected magnitude (whatever the scale of random-init outputs)."""
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))


def _images(n: int, size: int, channels: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


# --- Digits model ----------------------------------------------------------------------------
def test_digits_model_is_accurate_and_described(state_dir: Path) -> None:
    folder = digits_model_dir(state_dir)
    info = json.loads((folder / "info.json").read_text())
    print(f"held-out accuracy {info['holdout_accuracy']:.4f} in {info['train_seconds']}s of training")
    assert info["holdout_accuracy"] > 0.95
    assert info["labels"] == [str(d) for d in range(10)]
    assert info["seed"] == 0 and info["version"] == "1"
    assert {"tensorflow", "keras", "numpy", "scikit-learn", "pillow"} <= set(info["versions"])
    assert info["train_seconds"] < 120
    assert PROGRESS == [(epoch, info["epochs"]) for epoch in range(1, info["epochs"] + 1)]


def test_digits_cache_is_reused(state_dir: Path) -> None:
    model_file = digits_model_dir(state_dir) / "model.keras"
    before = model_file.stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_digits_model(state_dir) == model_file.parent
    assert time.perf_counter() - started < 1.0
    assert model_file.stat().st_mtime_ns == before
    assert [p.name for p in model_file.parent.parent.iterdir()] == ["1"]  # no temporary folders left


def test_digit_png_decodes_to_the_training_pixels() -> None:
    row = np.arange(64) % 17
    array = digit_to_array(row)
    assert array.shape == (32, 32, 1) and array.dtype == np.uint8
    decoded = Image.open(io.BytesIO(digit_to_png(row)))
    assert decoded.size == (32, 32) and decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded)[:, :, None], array)
    assert (digit_to_array(np.full(64, 16)) == 255).all() and (digit_to_array(np.zeros((8, 8))) == 0).all()
    with pytest.raises(ValueError, match="0..16"):
        digit_to_array(np.full(64, 17))


# --- The handler on the digits model ------------------------------------------------------------
def test_handler_shapes_and_probabilities(digits_handler: KerasImageHandler, holdout) -> None:
    assert isinstance(digits_handler, ModelHandler)
    info = digits_handler.info()
    assert (info.name, info.version, info.input_size, info.channels, info.embedding_size) == (
        "digits-cnn",
        "1",
        (32, 32),
        1,
        64,
    )
    assert info.labels == tuple("0123456789")
    images, labels = holdout
    result = digits_handler.predict_batch(images)
    assert result.embeddings.shape == (len(images), 64) and result.embeddings.dtype == np.float32
    assert result.probabilities.shape == (len(images), 10) and result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float((result.probabilities.argmax(axis=1) == labels).mean())
    print(f"handler accuracy on the held-out digits {accuracy:.4f}")
    assert accuracy > 0.95  # same pixels, same rescaling as in training
    assert result.top_k(info.labels, k=1)[0][0][0] == str(labels[0])


def test_handler_is_deterministic_and_padding_free(digits_handler: KerasImageHandler, holdout) -> None:
    images = holdout[0][:10]
    ten = digits_handler.predict_batch(images)
    again = digits_handler.predict_batch(images)
    np.testing.assert_array_equal(ten.embeddings, again.embeddings)
    np.testing.assert_array_equal(ten.probabilities, again.probabilities)
    three = digits_handler.predict_batch(images[:3])
    np.testing.assert_allclose(three.embeddings, ten.embeddings[:3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(three.probabilities, ten.probabilities[:3], rtol=1e-6, atol=1e-6)


def test_handler_never_retraces(digits_handler: KerasImageHandler, holdout) -> None:
    images = holdout[0]
    assert digits_handler.buckets == (1, 2, 4, 8, 16, 32)
    traced_at_load = digits_handler.trace_count
    assert traced_at_load == len(digits_handler.buckets)  # one trace per fixed shape, all during load()
    for n in (1, 3, 5, 17, 32, 70):  # 70 rows: two chunks of 32, then 6 rows padded to 8
        assert len(digits_handler.predict_batch(images[:n]).probabilities) == n
    assert digits_handler.trace_count == traced_at_load
    np.testing.assert_allclose(
        digits_handler.predict_batch(images[:70]).probabilities[64:],
        digits_handler.predict_batch(images[64:70]).probabilities, atol=1e-6,
    )  # fmt: skip
    empty = digits_handler.predict_batch(images[:0])
    assert empty.embeddings.shape == (0, 64) and empty.probabilities.shape == (0, 10)


def test_handler_is_safe_to_call_from_threads(digits_handler: KerasImageHandler, holdout) -> None:
    images = holdout[0][:96]
    chunks = [images[i : i + 12] for i in range(0, 96, 12)]
    serial = [digits_handler.predict_batch(c).probabilities for c in chunks]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda c: digits_handler.predict_batch(c).probabilities, chunks * 3))
    for got, expected in zip(parallel, serial * 3):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert digits_handler.trace_count == len(digits_handler.buckets)


def test_handler_rejects_wrong_images(digits_handler: KerasImageHandler) -> None:
    with pytest.raises(ValueError, match=r"Received: shape=\(2, 32, 32, 3\)"):
        digits_handler.predict_batch(_images(2, 32, channels=3))
    with pytest.raises(ValueError, match="Received: shape=\\(2, 28, 28, 1\\)"):
        digits_handler.predict_batch(_images(2, 28, channels=1))
    with pytest.raises(ValueError, match="dtype=float32"):
        digits_handler.predict_batch(np.zeros((2, 32, 32, 1), np.float32))


def test_handler_needs_load(state_dir: Path) -> None:
    handler = load_handler("digits-cnn", state_dir=state_dir, batch_size=4)
    with pytest.raises(RuntimeError, match="load"):
        handler.predict_batch(np.zeros((1, 32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        load_handler("digits-cnn", state_dir=state_dir, batch_size=0)


def test_digits_featurizer_with_a_head_file(
    state_dir: Path, digits_handler: KerasImageHandler, holdout, tmp_path: Path
) -> None:
    images = holdout[0][:6]
    featurizer = load_handler("digits-cnn", state_dir=state_dir, batch_size=8, mode="featurize")
    featurizer.load()
    features = featurizer.predict_batch(images)
    assert features.probabilities.shape == (6, 0) and featurizer.info().labels == ()
    np.testing.assert_allclose(features.embeddings, digits_handler.predict_batch(images).embeddings, atol=1e-6)

    inputs = keras.Input((64,))
    head = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(inputs))
    head.save(tmp_path / "head.keras")
    (tmp_path / "info.json").write_text(json.dumps({"name": "odd-even-other", "labels": ["odd", "even", "other"]}))
    classifier = load_handler("digits-cnn", state_dir=state_dir, batch_size=8, head=tmp_path / "head.keras")
    classifier.load()
    result = classifier.predict_batch(images)
    assert classifier.info().labels == ("odd", "even", "other")
    assert classifier.info().name == "digits-cnn+odd-even-other"
    np.testing.assert_allclose(result.probabilities, head.predict(features.embeddings, verbose=0), atol=1e-5)


# --- Keras applications (random weights, CPU-sized) ----------------------------------------------
def test_mobilenet_v2_featurizer_embeddings(state_dir: Path) -> None:
    handler = load_handler("MobileNetV2", state_dir=state_dir, batch_size=4, weights=None, mode="featurize")
    handler.load()
    images = _images(3, 224)
    result = handler.predict_batch(images)
    assert result.embeddings.shape == (3, 1280) and result.probabilities.shape == (3, 0)
    assert np.isfinite(result.embeddings).all() and result.embeddings.std() > 0
    preprocessed = keras.applications.mobilenet_v2.preprocess_input(images.astype(np.float32))  # [-1, 1], once
    expected = handler.model.predict(preprocessed, verbose=0)["embeddings"]
    _assert_close(result.embeddings, expected)  # random-init MobileNetV2 embeddings are tiny: compare relatively
    info = handler.info()
    assert (info.input_size, info.channels, info.version) == ((224, 224), 3, "random")
    assert info.extra["preprocess"] == "keras.applications.mobilenet_v2.preprocess_input"


def test_mobilenet_v3_small_predictor_probabilities(state_dir: Path, keras_home: Path) -> None:
    handler = load_handler("mobilenetv3small", state_dir=state_dir, batch_size=2, weights=None)
    handler.load()
    result = handler.predict_batch(_images(3, 224))  # two chunks
    assert result.probabilities.shape == (3, 1000) and result.embeddings.shape == (3, 576)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert handler.info().labels[:2] == ("imagenet:0", "imagenet:1")
    assert handler.info().embedding_size == 576
    assert handler.trace_count == len(handler.buckets) == 2


def test_split_predictor_equals_the_whole_application() -> None:
    """The predictor split at its pooling (embedding, then head) computes what the unsplit model does."""
    from streamdl.models.keras_apps import split_at_pooling

    for build in (keras.applications.MobileNetV3Small, keras.applications.MobileNetV2):
        whole = build(input_shape=(224, 224, 3), weights=None, include_top=True)
        featurizer, head = split_at_pooling(whole)
        x = np.random.default_rng(1).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
        embedding = featurizer.predict(x, verbose=0)
        assert embedding.ndim == 2 and embedding.shape[0] == 2
        np.testing.assert_allclose(
            head.predict(embedding, verbose=0), whole.predict(x, verbose=0), rtol=1e-4, atol=1e-6
        )


def test_imagenet_labels_from_the_keras_cache(keras_home: Path) -> None:
    keras_home.mkdir(parents=True)
    (keras_home / "imagenet_class_index.json").write_text(
        json.dumps({str(i): [f"n{i:08d}", f"class{i}"] for i in range(1000)})
    )
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[0] == "class0" and labels[999] == "class999"


def test_imagenet_weights_come_from_the_keras_cache(state_dir: Path, keras_home: Path, tmp_path: Path) -> None:
    """A weights file in $KERAS_HOME/models is loaded without any download, same for a path."""
    source = keras.applications.MobileNetV3Small(
        input_shape=(224, 224, 3), weights=None, include_top=False, pooling="avg"
    )
    keras_home.mkdir(parents=True)
    weights_file = keras_home / APPLICATIONS["MobileNetV3Small"].weights_no_top
    with h5py.File(weights_file, "w") as f:  # the legacy layout of the files Keras downloads
        from keras.src.legacy.saving import legacy_h5_format

        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    images = _images(2, 224)
    expected = source.predict(images.astype(np.float32), verbose=0)  # MobileNetV3 rescales inside
    for weights in ("imagenet", str(weights_file)):
        handler = load_handler("MobileNetV3Small", state_dir=state_dir, batch_size=2, weights=weights, mode="featurize")
        handler.load()
        _assert_close(handler.predict_batch(images).embeddings, expected)
    assert handler.info().version == weights_file.name


def test_mixed_precision_outputs_float32(state_dir: Path) -> None:
    handler = load_handler(
        "MobileNetV3Small", state_dir=state_dir, batch_size=2, weights=None, mode="featurize", mixed_precision=True
    )
    handler.load()
    assert keras.mixed_precision.dtype_policy().name == "float32"  # restored after building
    assert handler.model.get_layer("MobileNetV3Small").get_layer("conv").compute_dtype == "float16"
    assert handler.info().extra["precision"] == "mixed_float16"
    result = handler.predict_batch(_images(2, 224))
    assert result.embeddings.dtype == np.float32 and result.embeddings.shape == (2, 576)
    assert np.isfinite(result.embeddings).all()


# --- Errors ----------------------------------------------------------------------------------
def test_missing_imagenet_weights_say_which_file_goes_where(state_dir: Path, keras_home: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        load_handler("MobileNetV2", state_dir=state_dir, batch_size=4, weights="imagenet", mode="featurize")
    message = str(caught.value)
    assert "'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5'" in message
    assert str(keras_home) in message
    assert "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" in message
    assert isinstance(caught.value, StreamdlError)
    with pytest.raises(ModelNotFound, match="inception_v3_weights_tf_dim_ordering_tf_kernels.h5"):
        load_handler("InceptionV3", state_dir=state_dir, batch_size=4)  # classify: the file with the top


def test_missing_weights_path_is_named(state_dir: Path) -> None:
    with pytest.raises(ModelNotFound, match="'/nonexistent.h5' does not exist"):
        load_handler("MobileNetV2", state_dir=state_dir, batch_size=4, weights="/nonexistent.h5")


def test_bad_arguments_are_value_errors(state_dir: Path) -> None:
    with pytest.raises(ValueError, match="Received: weights=3"):
        load_handler("MobileNetV2", state_dir=state_dir, batch_size=4, weights=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Received: weights='/tmp/w\.bin'"):
        load_handler("MobileNetV2", state_dir=state_dir, batch_size=4, weights="/tmp/w.bin")
    with pytest.raises(ValueError, match="Received: mode='embed'"):
        load_handler("MobileNetV2", state_dir=state_dir, batch_size=4, weights=None, mode="embed")


def test_unknown_model_lists_known_names(state_dir: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        load_handler("NoSuchNet", state_dir=state_dir, batch_size=4)
    for name in ("digits-cnn", *APPLICATIONS):
        assert name in str(caught.value)
    assert set(available_models()) >= {"digits-cnn", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large",
                                       "EfficientNetB0", "ResNet50", "InceptionV3", "Xception"}  # fmt: skip
    with pytest.raises(ModelNotFound, match="does not exist"):
        load_handler("/nonexistent/model.keras", state_dir=state_dir, batch_size=4)


# --- Model files ---------------------------------------------------------------------------
def _tiny_model() -> keras.Model:
    image = keras.Input((16, 16, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(image)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    embedding = keras.layers.Dense(8, activation="relu", name="embedding")(x)
    probabilities = keras.layers.Dense(5, activation="softmax", name="probabilities")(embedding)
    return keras.Model(image, probabilities, name="tiny")


def test_keras_file_as_whole_model_and_featurizer(state_dir: Path, tmp_path: Path) -> None:
    model = _tiny_model()
    path = tmp_path / "tiny.keras"
    model.save(path)
    images = _images(3, 16)
    expected_embeddings = keras.Model(model.inputs, model.get_layer("embedding").output).predict(images, verbose=0)

    handler = load_handler(str(path), state_dir=state_dir, batch_size=4)
    handler.load()
    info = handler.info()
    assert (info.name, info.input_size, info.channels, info.embedding_size) == ("tiny", (16, 16), 3, 8)
    assert info.labels == ("0", "1", "2", "3", "4") and len(info.version) == 12
    result = handler.predict_batch(images)
    np.testing.assert_allclose(result.probabilities, model.predict(images, verbose=0), atol=1e-6)
    np.testing.assert_allclose(result.embeddings, expected_embeddings, atol=1e-6)

    featurizer = load_handler(path, state_dir=state_dir, batch_size=4, mode="featurize")  # type: ignore[arg-type]
    featurizer.load()
    features = featurizer.predict_batch(images)
    assert features.probabilities.shape == (3, 0)
    np.testing.assert_allclose(features.embeddings, expected_embeddings, atol=1e-6)


def test_saved_model_directory(state_dir: Path, tmp_path: Path) -> None:
    model = _tiny_model()
    model.export(tmp_path / "tiny_saved", verbose=False)
    handler = load_handler(str(tmp_path / "tiny_saved"), state_dir=state_dir, batch_size=4)
    handler.load()
    images = _images(3, 16)
    result = handler.predict_batch(images)
    assert handler.info().embedding_size == 0 and result.embeddings.shape == (3, 0)
    np.testing.assert_allclose(result.probabilities, model.predict(images, verbose=0), atol=1e-6)


def test_bucket_sizes() -> None:
    from streamdl.models.keras_handler import bucket_sizes

    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(64) == (1, 2, 4, 8, 16, 32, 64)
    assert bucket_sizes(100) == (1, 2, 4, 8, 16, 32, 64, 100)
    with pytest.raises(ValueError, match="batch_size"):
        bucket_sizes(0)


def test_held_out_ids_are_exactly_the_images_split_digits_holds_out():
    from streamdl.models.digits import held_out_ids, load_digit_images, split_digits

    images, _ = load_digit_images()
    _, x_holdout, _, _ = split_digits()
    ids = held_out_ids()
    picked = np.stack([images[int(i.split("-")[1])] for i in sorted(ids)])
    assert len(ids) == len(x_holdout)
    assert sorted(map(bytes, picked)) == sorted(map(bytes, x_holdout))
