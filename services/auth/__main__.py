"""`messenger-auth serve | import FILE.json | export`: the auth service's composition root."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError

from protocol import PROTOCOL_VERSION
from protocol.accounts import Meta
from services.auth.accounts import Accounts, StoredAddresses
from services.auth.archive_gateway import ArchiveGateway
from services.auth.broker_api import create_broker_app
from services.auth.broker_key import RequireKey
from services.auth.connections import BrokerConnections, SessionEnds, SessionSweeper
from services.auth.errors import BrokerUnavailable
from services.auth.hashing import PasswordHashing
from services.auth.importer import ImportFileError, Outcome, export_users, import_users, parse_file
from services.auth.inboxes import BrokerInboxes
from services.auth.public_api import amqp_url_with_vhost, create_public_app
from services.auth.ratelimit import LoginLimiter, TokenBucket
from services.auth.settings import AuthSettings
from services.auth.store import Store
from services.auth.validation import describe_errors
from services.auth.web import WebSessions, add_web_client
from services.logs import configure_logging

logger = logging.getLogger("services.auth")

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The Messenger auth service: accounts, sessions, and the broker's access checks.",
)


def _settings() -> AuthSettings:
    try:
        return AuthSettings()
    except ValidationError as exc:
        reason = describe_errors(exc.errors())
        typer.echo(f"error: bad MESSENGER_AUTH_* settings: {reason}", err=True)
        raise typer.Exit(2) from None


def _store(settings: AuthSettings) -> Store:
    try:
        return Store(settings.db_path)
    except (OSError, sqlite3.Error) as exc:
        typer.echo(f"error: cannot open the user store {settings.db_path}: {exc}", err=True)
        raise typer.Exit(2) from None


@cli.command()
def serve() -> None:
    """Serve the public account API and the broker's auth-backend API until Ctrl-C."""
    settings = _settings()
    configure_logging(settings.log_level)
    store = _store(settings)
    inboxes = BrokerInboxes.from_settings(settings)
    key = settings.archive_key.get_secret_value() if settings.archive_key is not None else None
    archive = ArchiveGateway(settings.archive_url, key, settings.archive_timeout_seconds)
    accounts = Accounts(
        store=store,
        hashing=PasswordHashing.from_settings(settings),
        limiter=LoginLimiter.create(
            settings.login_failures_per_user,
            settings.login_failures_per_address,
            settings.login_failure_window_seconds,
            free_failures=settings.login_free_failures,
            base_delay=settings.login_base_delay_seconds,
            max_delay=settings.login_max_delay_seconds,
            known=StoredAddresses(store, settings.login_known_address_days * 24 * 3600),
        ),
        inboxes=inboxes,
        token_ttl_seconds=settings.token_ttl_seconds,
        deleted_name_hold_seconds=settings.deleted_name_hold_days * 24 * 3600,
        forget_archive=archive.forget_user,
        broker_password_checks=TokenBucket(
            settings.broker_password_checks_per_second, settings.broker_password_checks_burst
        ),
    )
    amqp_urls = [amqp_url_with_vhost(url, settings.vhost) for url in settings.client_amqp_urls()]
    meta = Meta(
        protocol_version=PROTOCOL_VERSION,
        amqp_url=amqp_urls[0],
        amqp_urls=amqp_urls,
        vhost=settings.vhost,
    )
    web_sessions = WebSessions(lambda username, token: accounts.session_user(token) == username)
    sweeper, connections = _sweeper(settings, accounts, web_sessions)
    public = create_public_app(accounts, meta, settings.max_body_bytes, archive)
    add_web_client(public, settings.web_dir, settings.web_stomp_urls, web_sessions)
    broker: object = create_broker_app(accounts, settings.vhost, settings.max_body_bytes)
    if settings.broker_api_key is not None:
        broker = RequireKey(broker, settings.broker_api_key.get_secret_value())  # type: ignore[arg-type]
    servers = [
        _Server(_config(public, settings.public_host, settings.public_port)),
        # No access log there: a line per broker check is noise, and a path may hold the key.
        _Server(
            _config(broker, settings.broker_api_host, settings.broker_api_port, access_log=False)
        ),
    ]
    logger.info(
        "public API on http://%s:%d, broker auth API on http://%s:%d%s",
        settings.public_host,
        settings.public_port,
        settings.broker_api_host,
        settings.broker_api_port,
        " (behind its key)" if settings.broker_api_key is not None else "",
    )
    try:
        sweeper.start()
        asyncio.run(_serve_all(servers))
    finally:
        sweeper.stop()
        if connections is not None:
            connections.close()
        archive.close()
        inboxes.close()
        store.close()
    if not all(server.started for server in servers):
        raise typer.Exit(1)
    logger.info("stopped")


def _sweeper(
    settings: AuthSettings, accounts: Accounts, web_sessions: WebSessions
) -> tuple[SessionSweeper, BrokerConnections | None]:
    """What ends the connections of ended sessions (the web client's sockets, and AMQP
    connections through the management API when there is one), wired into `accounts`."""
    holders: list[SessionEnds] = [web_sessions]
    connections = None
    if settings.management_urls:
        connections = BrokerConnections(
            settings.management_urls,
            settings.amqp_user,
            settings.amqp_password.get_secret_value(),
            settings.vhost,
        )
        holders.append(connections)
    else:
        logger.warning(
            "no management API (MESSENGER_AUTH_MANAGEMENT_URLS): logout and expiry do not "
            "close open AMQP connections"
        )
    sweeper = SessionSweeper(
        holders,
        accounts.live_session_tags,
        accounts.delete_expired_sessions,
        settings.session_sweep_seconds,
    )
    accounts.on_session_end = sweeper.session_ended
    return sweeper, connections


@cli.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help='JSON file {"users": [...]}, or - for stdin')],
) -> None:
    """Import users from FILE; report created / present / invalid per entry.

    Exit status: 0 all entries fine, 1 some invalid (the valid ones are imported), 2 the file
    is unusable, or the broker is unreachable or refused the auth service's login. To import
    into a running `make run`, use `make import FILE=...`: it knows the instance's settings."""
    settings = _settings()
    configure_logging("CRITICAL")  # the report below says all; no log lines in between
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        entries = parse_file(text)
    except (OSError, UnicodeDecodeError, ImportFileError) as exc:
        typer.echo(f"error: cannot import {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    store = _store(settings)
    inboxes = BrokerInboxes.from_settings(settings)
    try:
        results = import_users(entries, store, PasswordHashing.from_settings(settings), inboxes)
    finally:
        inboxes.close()
        store.close()
    counts = {outcome: 0 for outcome in Outcome}
    for result in results:
        counts[result.outcome] += 1
        if result.outcome is not Outcome.FAILED:
            typer.echo(result.line())
    typer.echo(
        f"{counts[Outcome.CREATED]} created, {counts[Outcome.PRESENT]} already present, "
        f"{counts[Outcome.INVALID]} invalid"
    )
    failed = [result for result in results if result.outcome is Outcome.FAILED]
    if failed:
        hint = (
            "is MESSENGER_AUTH_AMQP_PASSWORD the auth account's password? (`make import` "
            "reads it from the running `make run`)"
            if "refused" in failed[0].reason
            else f"is the broker running at {_nodes(settings)}?"
        )
        typer.echo(
            f"error: {failed[0].reason}; the import stopped at entry #{failed[0].index} "
            f"(entries before it are imported) — {hint}",
            err=True,
        )
        raise typer.Exit(2)
    if counts[Outcome.INVALID]:
        raise typer.Exit(1)


@cli.command()
def migrate() -> None:
    """Bring the broker's per-user queues up to date (idempotent).

    `make run` and compose run it at every start: an anchor `user.<name>` for every user;
    with legacy inboxes off, each `inbox.<name>` is unbound, and deleted when empty (a
    non-empty one stays for its owner's client to drain)."""
    settings = _settings()
    configure_logging("WARNING")
    store = _store(settings)
    inboxes = BrokerInboxes.from_settings(settings)
    try:
        report = inboxes.migrate(user.username for user in store.all_users())
    except BrokerUnavailable as exc:
        typer.echo(f"error: {exc}; is the broker running at {_nodes(settings)}?", err=True)
        raise typer.Exit(2) from None
    finally:
        inboxes.close()
        store.close()
    typer.echo(
        f"{report.anchors} anchors, {report.unbound} legacy inboxes unbound "
        f"({report.deleted} empty ones deleted, {report.kept} kept for their owners to drain)"
    )


def _nodes(settings: AuthSettings) -> str:
    return ", ".join(f"{host}:{port}" for host, port in settings.broker_nodes())


@cli.command()
def export() -> None:
    """Write every user as JSON to stdout (password hashes, never passwords)."""
    settings = _settings()
    configure_logging("WARNING")
    store = _store(settings)
    try:
        typer.echo(json.dumps(export_users(store), indent=2, ensure_ascii=False))
    finally:
        store.close()


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `_serve_all`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app: object, host: str, port: int, access_log: bool = True) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        access_log=access_log,
        log_config=None,  # our logging (services.logs), not uvicorn's
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
    )


async def _serve_one(server: _Server) -> None:
    try:
        await server.serve()
    except SystemExit:  # uvicorn's answer to a port in use; it has logged why
        server.should_exit = True


async def _serve_all(servers: list[_Server]) -> None:
    """Run the servers in this loop; SIGINT/SIGTERM (or one server ending) stops them all."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            if server.should_exit:  # a second signal: do not wait for open connections
                server.force_exit = True
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(_serve_one(server)) for server in servers]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:  # Ctrl-C before `serve` installs its handler, or in import
        sys.exit(130)


if __name__ == "__main__":
    main()
