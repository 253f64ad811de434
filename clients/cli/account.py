"""`messenger signup | login | logout | whoami`: accounts and the local session."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

import typer

from clients.cli.context import Cli, cli_of
from clients.cli.edge import EXIT_CODES_HELP
from clients.cli.output import Painter, json_line, local_time, out, person
from clients.library.errors import InvalidInput, MessengerError, ServerUnreachable
from clients.library.state import StoredSession, forget_session, save_session
from protocol.accounts import check_display_name, check_password, check_username

app = typer.Typer()

PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of stdin (for scripts) instead of asking.",
    ),
]


def _checked(check: Callable[[str], str], value: str) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def read_password(from_stdin: bool, *, confirm: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
        if not password:
            raise InvalidInput("no password on stdin", hint="pipe it in: `echo PASSWORD | ...`")
        return password
    if not sys.stdin.isatty():
        raise InvalidInput(
            "no terminal to ask for the password on", hint="pass --password-stdin and pipe it in"
        )
    while True:
        first: str = typer.prompt("Password", hide_input=True)
        if not confirm:
            return first
        try:
            check_password(first)
        except ValueError as exc:
            typer.echo(f"{exc}; try another.", err=True)
            continue
        second: str = typer.prompt("Password again", hide_input=True)
        if first == second:
            return first
        typer.echo("The two passwords differ; try again.", err=True)


def _open_session(
    cli: Cli, username: str, password: str, display_name: str | None
) -> StoredSession:
    with cli.accounts() as accounts:
        session, device = accounts.login_device(username, password)
        if display_name is None:
            try:
                display_name = accounts.user(username, token=session.token).display_name
            except MessengerError:
                display_name = None
    stored = StoredSession(
        server=cli.server,
        username=username,
        token=session.token,
        expires_at=session.expires_at,
        display_name=display_name,
        device_id=device.device_id if device else None,
        device_queue=device.device_queue if device else None,
        device_since=datetime.now(UTC) if device else None,
    )
    save_session(cli.paths, stored)
    return stored


@app.command(epilog=EXIT_CODES_HELP)
def signup(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="3 to 32 of a-z 0-9 _ . - (it is your address).")],
    display_name: Annotated[
        str | None,
        typer.Option("--display-name", "-n", help="The name people see next to your username."),
    ] = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Create an account on the server, then log in as it."""
    cli = cli_of(ctx)
    username = _checked(check_username, username)
    if display_name is None:
        if sys.stdin.isatty() and not password_stdin:
            display_name = typer.prompt("Display name", default=username)
        else:
            display_name = username
    display_name = _checked(check_display_name, display_name.strip())
    password = _checked(check_password, read_password(password_stdin, confirm=True))
    with cli.accounts() as accounts:
        user = accounts.signup(username, display_name, password)
    try:
        session = _open_session(cli, username, password, user.display_name)
    except MessengerError as exc:
        exc.args = (f"signed up as {username}, but could not log in: {exc}",)
        exc.hint = f"log in with `messenger login {username}`" + (
            f" ({exc.hint})" if exc.hint else ""
        )
        raise
    paint = Painter.for_stream(sys.stdout)
    out(
        f"Welcome, {paint(person(username, user.display_name), 'bold')}! Signed up on {cli.server}"
        f" and logged in until {local_time(session.expires_at)}."
    )
    if sys.stdout.isatty():
        out(paint("Next: `messenger send USERNAME TEXT` or `messenger chat USERNAME`.", "dim"))


@app.command(epilog=EXIT_CODES_HELP)
def login(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Your username.")],
    password_stdin: PasswordStdin = False,
) -> None:
    """Log in; the session is kept under MESSENGER_HOME, readable by you only."""
    cli = cli_of(ctx)
    username = username.strip()
    password = read_password(password_stdin, confirm=False)
    session = _open_session(cli, username, password, None)
    paint = Painter.for_stream(sys.stdout)
    out(
        f"Logged in as {paint(person(username, session.display_name), 'bold')} on {cli.server}"
        f" until {local_time(session.expires_at)}."
    )


@app.command(epilog=EXIT_CODES_HELP)
def logout(ctx: typer.Context) -> None:
    """End the session: revoke it on the server and forget it here."""
    cli = cli_of(ctx)
    session = cli.session
    if session is None:
        out("Not logged in.")
        return
    try:
        with cli.accounts() as accounts:
            accounts.logout(session.token)
    except ServerUnreachable as exc:
        forget_session(cli.paths)
        raise ServerUnreachable(
            f"forgot the session here, but could not revoke it: {exc}",
            hint=f"it stays valid on the server until {local_time(session.expires_at)}",
        ) from exc
    forget_session(cli.paths)
    out(f"Logged out {session.username}.")


@app.command(epilog=EXIT_CODES_HELP)
def whoami(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object: username, display_name, server, expires_at."),
    ] = False,
) -> None:
    """Who is logged in here, on which server, until when."""
    cli = cli_of(ctx)
    session = cli.require_session()
    if as_json:
        out(
            json_line(
                {
                    "username": session.username,
                    "display_name": session.display_name,
                    "server": session.server,
                    "expires_at": session.expires_at.isoformat(),
                }
            )
        )
        return
    paint = Painter.for_stream(sys.stdout)
    out(
        f"{paint(person(session.username, session.display_name), 'bold')} on {session.server}"
        f" (session valid until {local_time(session.expires_at)})"
    )
