"""The broker API behind the run's key: only `/<key>/broker/*` is served."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from services.auth.broker_key import RequireKey

KEY = "k3y-0f-this-run"


async def echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{request.method} {request.url.path}")


INNER = Starlette(routes=[Route("/broker/user", echo, methods=["GET", "POST"])])


def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=RequireKey(INNER, KEY))
        async with httpx.AsyncClient(transport=transport, base_url="http://broker-api") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(send())


def test_the_key_in_the_path_reaches_the_api_without_it():
    response = call("POST", f"/{KEY}/broker/user", data={"username": "a"})
    assert (response.status_code, response.text) == (200, "POST /broker/user")


@pytest.mark.parametrize(
    "path",
    [
        "/broker/user",
        f"/{KEY[:-1]}/broker/user",
        f"/{KEY}x/broker/user",
        "/",
        f"/x/{KEY}/broker/user",
    ],
)
def test_without_the_right_key_everything_is_404(path: str):
    response = call("POST", path, data={"username": "a", "password": "b"})
    assert response.status_code == 404
    assert "allow" not in response.text


def test_a_key_must_be_one_path_segment():
    for bad in ("", "a/b"):
        with pytest.raises(ValueError):
            RequireKey(INNER, bad)
