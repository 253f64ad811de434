"""`messenger history USERNAME`: a conversation, oldest first, from the local history filled
from the server's where it lacks pages (clients/library/pages.py)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from clients.cli.completion import complete_peer
from clients.cli.context import NAME_LOOKUP_TIMEOUT, Cli, cli_of, logged_in
from clients.cli.edge import EXIT_CODES_HELP
from clients.cli.output import Painter, err, json_line, message_line, out
from clients.library.errors import (
    AuthenticationFailed,
    HistoryUnavailable,
    InvalidInput,
    MessengerError,
    NotFound,
)
from clients.library.history import History
from clients.library.pages import fill_back, fill_recent
from clients.library.state import StoredSession
from protocol.accounts import check_username

app = typer.Typer()

RECENT = 50  # without --limit, the newest page of a conversation with no local copy


def peer_name(username: str) -> str:
    try:
        return check_username(username.strip())
    except ValueError as exc:
        raise InvalidInput(f"'{username}' cannot be a username: {exc}") from exc


@app.command(epilog=EXIT_CODES_HELP)
def history(
    ctx: typer.Context,
    username: Annotated[
        str, typer.Argument(help="The other person.", autocompletion=complete_peer)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Only the last N messages.")
    ] = None,
) -> None:
    """Your conversation with USERNAME, oldest first (filled from the server as needed).

    The local history, completed from the server where it lacks messages: a new device
    pages back through everything (with --limit N, as far as the last N).

    What you sent shows ✓ accepted, ✓✓ delivered or ✓✓ read (--json: `status`); receipts
    are picked up whenever inbox, listen or chat runs. No messages: says so on stderr
    (exit 0), or that there is no such user (exit 1).
    """
    cli = cli_of(ctx)
    peer = peer_name(username)
    with logged_in(cli) as (session, history, names):
        problem = _fill(cli, session, history, peer, limit)
        messages = history.conversation(peer, limit)
        if not messages:
            _no_conversation(cli, session.token, peer)
            return
        if problem is not None:
            err(f"Showing the local history only: {problem}.")
        names.refresh(peer)
        if as_json:
            for message in messages:
                out(json_line(message.to_json()))
            return
        paint = Painter.for_stream(sys.stdout)
        for message in messages:
            out(message_line(message, me=session.username, names=names, paint=paint))


def _fill(
    cli: Cli, session: StoredSession, history: History, peer: str, limit: int | None
) -> str | None:
    """Complete the local copy from the server; what kept it from doing so (None: nothing,
    or an older server that keeps no history)."""
    try:
        with cli.conversations(session) as api:
            fill_recent(api, history, peer, limit or RECENT)
            fill_back(api, history, peer, limit)
    except AuthenticationFailed:
        raise
    except NotFound:
        return None  # no such user: the empty local history says it below
    except HistoryUnavailable as exc:
        return None if "keeps no history" in str(exc) else str(exc)
    except MessengerError as exc:
        return str(exc)
    return None


def _no_conversation(cli: Cli, token: str, peer: str) -> None:
    """Nothing in the local history: say whether the person exists (exit 1 if not)."""
    try:
        with cli.accounts(timeout=NAME_LOOKUP_TIMEOUT) as accounts:
            accounts.user(peer, token=token)
    except NotFound:
        raise NotFound(
            f"there is no user named '{peer}', so there is no conversation",
            hint="check the spelling; `messenger users NAME` looks a user up",
        ) from None
    except MessengerError:  # the server is away: the local history is all we know
        err(f"No messages with {peer} in the local history.")
        return
    err(f"No messages with {peer} yet.")
