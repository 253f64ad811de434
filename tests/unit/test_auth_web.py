"""The web client's HTTP side in-process: the page, its assets, caching, and the CSP."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.auth.web import CONTENT_SECURITY_POLICY, add_web_client, same_origin

PAGE = b"<!doctype html><title>Messenger</title>" + b"<p>hello</p>" * 50
SCRIPT = b"console.log('messenger');" * 40


def serve(directory: Path | None) -> FastAPI:
    app = FastAPI()
    add_web_client(app, directory, ["ws://127.0.0.1:9/ws"])
    return app


def get(app: FastAPI, url: str, method: str = "GET", **headers: str) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, headers=headers)

    return asyncio.run(send())


@pytest.fixture
def built(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_bytes(PAGE)
    (tmp_path / "assets" / "app-ABC.js").write_bytes(SCRIPT)
    return tmp_path


def test_the_page_is_served_with_a_strict_policy_and_revalidated(built: Path):
    response = get(serve(built), "/", **{"accept-encoding": "identity"})
    assert response.status_code == 200
    assert response.content == PAGE
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    for directive in ("script-src 'self'", "style-src 'self'", "connect-src 'self'",
                      "default-src 'none'", "frame-ancestors 'none'"):  # fmt: skip
        assert directive in policy
    assert "unsafe" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-cache"


def test_assets_are_cached_for_good_and_the_page_answers_304_when_unchanged(built: Path):
    app = serve(built)
    asset = get(app, "/assets/app-ABC.js")
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert asset.headers["content-type"].startswith("text/javascript")
    page = get(app, "/")
    again = get(app, "/", **{"if-none-match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_gzip_when_the_browser_takes_it(built: Path):
    response = get(serve(built), "/assets/app-ABC.js", **{"accept-encoding": "gzip, br"})
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) < len(SCRIPT)
    assert response.content == SCRIPT  # httpx undoes the gzip
    head = get(serve(built), "/", method="HEAD", **{"accept-encoding": "gzip"})
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(gzip.compress(PAGE, 9, mtime=0))


def test_unknown_assets_and_a_missing_build_are_404(built: Path, tmp_path: Path):
    assert get(serve(built), "/assets/nope.js").status_code == 404
    assert get(serve(built), "/assets/../index.html").status_code == 404
    missing = get(serve(tmp_path / "nowhere"), "/")
    assert missing.status_code == 404 and "make web" in missing.text
    assert get(serve(None), "/").status_code == 404


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "chat.example", True),  # not a browser
        ("http://chat.example", "chat.example", True),
        ("https://chat.example:8443", "chat.example:8443", True),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("http://evil.example", "chat.example", False),
        ("http://chat.example.evil", "chat.example", False),
        ("http://127.0.0.1:9999", "127.0.0.1:8080", False),
        ("null", "chat.example", False),
        ("http://chat.example", None, False),
    ],
)
def test_only_the_page_own_origin_may_open_the_websocket(origin, host, allowed):
    assert same_origin(origin, host) is allowed
