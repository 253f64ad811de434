"""`messenger users USERNAME` (alias `whois`): who is behind a username."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from clients.cli.completion import complete_peer
from clients.cli.context import cli_of
from clients.cli.conversation import peer_name
from clients.cli.edge import EXIT_CODES_HELP
from clients.cli.output import Painter, clean, json_line, out

app = typer.Typer()

UsernameArgument = Annotated[
    str, typer.Argument(help="The username to look up.", autocompletion=complete_peer)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the user as JSON.")]


@app.command(epilog=EXIT_CODES_HELP)
def users(ctx: typer.Context, username: UsernameArgument, as_json: JsonOption = False) -> None:
    """Look up a user's display name (also refreshes the local cache of names)."""
    cli = cli_of(ctx)
    name = peer_name(username)
    session = cli.session
    token = session.token if session is not None and not session.expired else None
    with cli.accounts() as accounts:
        user = accounts.user(name, token=token)
    if session is not None:
        with cli.history(session) as history:
            history.remember_display_name(user.username, user.display_name)
    if as_json:
        out(json_line({"username": user.username, "display_name": user.display_name}))
        return
    paint = Painter.for_stream(sys.stdout)
    out(f"{paint(user.username, 'bold')}  {clean(user.display_name)}")


@app.command("whois", epilog=EXIT_CODES_HELP)
def whois(ctx: typer.Context, username: UsernameArgument, as_json: JsonOption = False) -> None:
    """Same as `users`."""
    users(ctx, username, as_json)
