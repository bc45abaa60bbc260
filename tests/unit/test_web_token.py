"""``streamdl serve`` off loopback: every request needs the token (401 without it), and binding to another
address without a token fails unless ``--insecure``. No Elasticsearch is reached: the token is checked
before any handler runs."""

from __future__ import annotations

import asyncio
import base64

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streamdl.errors import StreamdlError
from streamdl.settings import load_settings
from streamdl.streams.web.server import create_app, is_loopback, serve

TOKEN = "s3cret-token"


class NoSearch:
    """Stands in for the search, which these requests never reach (the index route would say otherwise)."""

    class es:  # the attribute the app closes
        @staticmethod
        def close() -> None:
            pass


def statuses(headers_list: list[dict[str, str]]) -> list[int]:
    async def run() -> list[int]:
        app = create_app(load_settings({}, env_file=None), NoSearch(), token=TOKEN)
        async with TestClient(TestServer(app)) as client:
            out = []
            for headers in headers_list:
                resp = await client.get("/no-such-page", headers=headers)
                out.append(resp.status)
                if resp.status == 401:
                    assert resp.headers["WWW-Authenticate"].startswith("Basic")
                    assert "token" in (await resp.json())["error"]
            return out

    return asyncio.run(run())


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()


def test_requests_without_the_token_get_401_and_with_it_get_through():
    got = statuses(
        [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": basic("wrong")},
            {"Authorization": "Basic %%%"},
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": basic(TOKEN)},
        ]
    )
    assert got == [401, 401, 401, 401, 404, 404]  # 404: through the check, to the router (no such page)


def test_binding_off_loopback_needs_a_token_or_insecure(tmp_path, monkeypatch):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(StreamdlError, match="STREAMDL_WEB_TOKEN_FILE.*--insecure"):
        serve(load_settings({}, env_file=None), "0.0.0.0", 8088)


def test_the_token_comes_from_its_file(tmp_path, monkeypatch):
    (tmp_path / "token").write_text(TOKEN + "\n")
    monkeypatch.setenv("STREAMDL_WEB_TOKEN_FILE", str(tmp_path / "token"))
    settings = load_settings({}, env_file=None)
    assert settings.web_token.get_secret_value() == TOKEN
    assert TOKEN not in str(settings.masked())


def test_metrics_need_the_token_and_count_requests_per_route():
    """``/metrics`` is behind the token like every route; it counts each answer by route pattern (``unmatched`` for
    unknown paths, so a client cannot grow the label values), method and status, 401s included."""
    from streamdl.streams.web.metrics import REQUESTS

    def count(route: str, status: str) -> float:
        return REQUESTS.labels(route, "GET", status)._value.get()

    async def run() -> tuple[int, int, str]:
        app = create_app(load_settings({}, env_file=None), NoSearch(), token=TOKEN)
        async with TestClient(TestServer(app)) as client:
            denied = (await client.get("/metrics")).status
            await client.get("/a/random/path", headers={"Authorization": f"Bearer {TOKEN}"})
            resp = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            return denied, resp.status, await resp.text()

    before = (count("/metrics", "401"), count("unmatched", "404"), count("/metrics", "200"))
    denied, ok, text = asyncio.run(run())
    assert (denied, ok) == (401, 200)
    assert (count("/metrics", "401"), count("unmatched", "404"), count("/metrics", "200")) == (
        before[0] + 1,
        before[1] + 1,
        before[2] + 1,
    )
    assert 'streamdl_web_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert 'streamdl_web_request_seconds_bucket{le="0.005",route="/metrics"}' in text
    assert "/a/random/path" not in text
