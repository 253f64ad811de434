"""`messenger account delete`: the account, its sessions and devices, gone for good.

The server removes the account, every session and device queue, and the account's own
archive (read state, notes to self); what it sent stays in the other people's history,
shown there as from a deleted user, and the name cannot be signed up again for a while
(so nobody can pose as the departed). Here, the session file and this account's local
history are removed too.
"""

from __future__ import annotations

import shutil
import sys

import typer

from clients.cli.account import PasswordStdin, read_password
from clients.cli.context import cli_of
from clients.cli.edge import EXIT_CODES_HELP
from clients.cli.output import err, out
from clients.library.state import forget_session

app = typer.Typer()
account_app = typer.Typer(help="Your account on the server.", no_args_is_help=True)
app.add_typer(account_app, name="account")


@account_app.command("delete", epilog=EXIT_CODES_HELP)
def delete(ctx: typer.Context, password_stdin: PasswordStdin = False) -> None:
    """Delete your account for good (asks for the password): sessions, devices and your
    own archive on the server, and the session and history on this machine. Messages you
    sent stay with the people you sent them to, shown as from a deleted user."""
    cli = cli_of(ctx)
    session = cli.require_session()
    if not password_stdin and sys.stdin.isatty():
        err(
            f"This deletes the account {session.username} on {session.server} for good."
            " Enter its password to go on (Ctrl-C cancels)."
        )
    password = read_password(password_stdin, confirm=False)
    with cli.conversations(session) as api:
        api.delete_account(password)
    forget_session(cli.paths)
    local = cli.paths.history_file(session.username).parent
    shutil.rmtree(local, ignore_errors=True)
    out(
        f"Deleted the account {session.username}: its sessions and devices on the server,"
        " its session and history here."
    )
