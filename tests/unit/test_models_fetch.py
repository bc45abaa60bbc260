"""``streamdl models fetch``: download into the Keras cache, checked against the published hash, from a
local HTTP server the test starts (no internet here)."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from streamdl.infra.process import free_port
from streamdl.models.catalog import load_handler
from streamdl.models.errors import ModelNotFound
from streamdl.models.fetch import FetchError, download_verified, fetch_weights
from streamdl.models.keras_apps import application_spec, resolve_weights


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(base URL, folder)``: an HTTP server on 127.0.0.1 serving ``folder``."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras" / "models"


def test_a_download_is_kept_only_when_its_hash_matches(served, tmp_path: Path):
    url, folder = served
    (folder / "w.h5").write_bytes(b"weights" * 1000)
    good = hashlib.md5(b"weights" * 1000).hexdigest()
    dest = tmp_path / "cache" / "w.h5"
    got = download_verified(f"{url}/w.h5", dest, good)
    assert got.verified and got.downloaded and dest.read_bytes() == b"weights" * 1000
    assert got.sha256 == hashlib.sha256(b"weights" * 1000).hexdigest()
    dest.unlink()
    with pytest.raises(FetchError, match=f"not the published {'0' * 32}: refused"):
        download_verified(f"{url}/w.h5", dest, "0" * 32)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a temporary one


def test_fetch_refuses_a_file_that_is_not_the_published_one(served, keras_home: Path):
    url, folder = served
    name = application_spec("ResNet50").weights_file("featurize")
    (folder / name).write_bytes(b"not the real ResNet50 weights")
    with pytest.raises(FetchError, match="not the published 4d473c1dd8becc155b73f8504c6f6626"):
        fetch_weights("resnet50", "featurize", mirror=url)
    assert not (keras_home / name).exists()


def test_fetch_puts_the_file_where_the_workers_look(served, keras_home: Path):
    url, folder = served
    spec = application_spec("MobileNetV2")
    (folder / spec.weights_file("classify")).write_bytes(b"h5 bytes")
    got = fetch_weights("MobileNetV2", "classify", mirror=url + "/")
    assert got.path == keras_home / spec.weights_file("classify") and not got.verified  # Keras publishes none
    assert resolve_weights(spec, "classify", "imagenet") == got.path


def test_offline_it_fails_at_once_with_the_url_and_the_manual_steps(keras_home: Path):
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FetchError, match=r"could not download http://127\.0\.0\.1:\d+/resnet50.*copy the file to"):
        fetch_weights("ResNet50", "classify", mirror=closed, timeout=5)
    with pytest.raises(ModelNotFound, match="streamdl models fetch MobileNetV2"):
        load_handler("MobileNetV2", state_dir=keras_home, batch_size=1, mode="featurize")


def test_the_cli_fetches_both_files(served, keras_home: Path, capsys):
    from streamdl.streams.cli.main import main

    url, folder = served
    spec = application_spec("EfficientNetB0")
    for mode in ("featurize", "classify"):
        (folder / spec.weights_file(mode)).write_bytes(b"x")
    (folder / application_spec("MobileNetV2").weights_file("featurize")).write_bytes(b"y")
    assert main(["models", "fetch", "MobileNetV2", "--mode", "featurize", "--mirror", url]) == 0
    assert "featurize: " + str(keras_home) in capsys.readouterr().out
    assert main(["models", "fetch", "EfficientNetB0", "--mirror", url]) == 2
    assert "not the published 50bc09e76180e00e4465e1a485ddc09d" in capsys.readouterr().err
