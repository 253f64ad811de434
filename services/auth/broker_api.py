"""RabbitMQ's HTTP auth backend (rabbitmq_auth_backend_http): never published outside.

RabbitMQ POSTs form-encoded fields and reads the body of an HTTP 200: `allow` or `deny`.
Anything unexpected (a missing field, a malformed body) is a `deny`, never an error status,
which RabbitMQ would also treat as a refusal but log as a backend failure.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from services.auth import permissions
from services.auth.accounts import Accounts
from services.auth.body_limit import BodySizeLimit

logger = logging.getLogger(__name__)

ALLOW = "allow"
DENY = "deny"


def create_broker_app(accounts: Accounts, vhost: str, max_body_bytes: int = 64 * 1024) -> FastAPI:
    app = FastAPI(title="Messenger broker auth", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.api_route("/broker/user", methods=["GET", "POST"])
    async def user(request: Request) -> PlainTextResponse:
        fields = await _fields(request)
        username, password = fields.get("username", ""), fields.get("password", "")
        if not username or not password:
            return _answer(False)
        # Verifying a password costs tens of milliseconds of CPU: off the event loop.
        allowed = await run_in_threadpool(accounts.broker_login, username, password)
        return _answer(allowed)

    @app.api_route("/broker/vhost", methods=["GET", "POST"])
    async def vhost_access(request: Request) -> PlainTextResponse:
        fields = await _fields(request)
        allowed = permissions.vhost_allowed(
            fields.get("username", ""), fields.get("vhost", ""), vhost
        )
        if not allowed:
            logger.info("vhost %r denied to %r", fields.get("vhost"), fields.get("username"))
        return _answer(allowed)

    @app.api_route("/broker/resource", methods=["GET", "POST"])
    async def resource(request: Request) -> PlainTextResponse:
        fields = await _fields(request)
        allowed = permissions.resource_allowed(
            username=fields.get("username", ""),
            vhost=fields.get("vhost", ""),
            resource=fields.get("resource", ""),
            name=fields.get("name", ""),
            permission=fields.get("permission", ""),
            allowed_vhost=vhost,
        )
        if not allowed:
            logger.info(
                "%s on %s %r denied to %r",
                fields.get("permission"),
                fields.get("resource"),
                fields.get("name"),
                fields.get("username"),
            )
        return _answer(allowed)

    @app.api_route("/broker/topic", methods=["GET", "POST"])
    async def topic(request: Request) -> PlainTextResponse:
        return _answer(permissions.topic_allowed())

    return app


async def _fields(request: Request) -> dict[str, str]:
    """The form fields (or, for GET, the query) as one value each; garbage gives {}."""
    if request.method == "GET":
        raw = request.url.query
    else:
        try:
            raw = (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            return {}
    parsed = parse_qs(raw, keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items() if len(values) == 1}


def _answer(allowed: bool) -> PlainTextResponse:
    return PlainTextResponse(ALLOW if allowed else DENY)
