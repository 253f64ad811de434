"""`messenger history USERNAME`: a conversation from the local history, oldest first."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from clients.cli.completion import complete_peer
from clients.cli.context import NAME_LOOKUP_TIMEOUT, Cli, cli_of, logged_in
from clients.cli.edge import EXIT_CODES_HELP
from clients.cli.output import Painter, err, json_line, message_line, out
from clients.library.errors import InvalidInput, MessengerError, NotFound
from protocol.accounts import check_username

app = typer.Typer()


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
    """Your conversation with USERNAME from the local history, oldest first.

    What you sent shows ✓ sent or ✓✓ delivered; receipts are picked up whenever inbox, listen
    or chat runs. No messages: says so on stderr (exit 0), or that there is no such user
    (exit 1).
    """
    cli = cli_of(ctx)
    peer = peer_name(username)
    with logged_in(cli) as (session, history, names):
        messages = history.conversation(peer, limit)
        if not messages:
            _no_conversation(cli, session.token, peer)
            return
        if as_json:
            for message in messages:
                out(json_line(message.to_json()))
            return
        paint = Painter.for_stream(sys.stdout)
        for message in messages:
            out(message_line(message, me=session.username, names=names, paint=paint))


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
