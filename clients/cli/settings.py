"""`messenger settings`: the account's settings (kept on the server, for every device).

    messenger settings [--json]                # show them
    messenger settings read-receipts on|off    # change one

One setting so far: `read-receipts`. Off, the people who write to you no longer learn that
you read their messages; your own devices still do (unread counts stay right), and you
still see when others read yours (as in most messengers, where this is not reciprocal).
"""

from __future__ import annotations

import enum
import sys
from typing import Annotated

import typer

from clients.cli.context import cli_of, logged_in
from clients.cli.edge import EXIT_CODES_HELP
from clients.cli.output import Painter, json_line, out
from clients.library.receipts import SettingsCache
from protocol.conversations import AccountSettings


class OnOff(enum.StrEnum):
    on = "on"
    off = "off"


app = typer.Typer()
settings_app = typer.Typer(
    help="Show or change your account's settings (kept on the server, for every device).",
    invoke_without_command=True,
    epilog=EXIT_CODES_HELP,
)
app.add_typer(settings_app, name="settings")


def _show(settings: AccountSettings, as_json: bool) -> None:
    if as_json:
        out(json_line(settings.model_dump(mode="json")))
        return
    paint = Painter.for_stream(sys.stdout)
    state = paint("on", "green") if settings.read_receipts else paint("off", "yellow")
    out(f"read-receipts  {state}  (whether people learn that you read their messages)")


@settings_app.callback()
def settings(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Show your settings; `messenger settings read-receipts on|off` changes one."""
    if ctx.invoked_subcommand is not None:
        return
    cli = cli_of(ctx)
    with logged_in(cli) as (session, history, _names):
        with cli.conversations(session) as api:
            current = api.settings()
        SettingsCache(history, api.settings).remember(current)
    _show(current, as_json)


@settings_app.command("read-receipts", epilog=EXIT_CODES_HELP)
def read_receipts(
    ctx: typer.Context,
    value: Annotated[OnOff, typer.Argument(help="on or off.")],
) -> None:
    """Turn sending read receipts on or off."""
    cli = cli_of(ctx)
    with logged_in(cli) as (session, history, _names):
        with cli.conversations(session) as api:
            changed = api.change_settings(AccountSettings(read_receipts=value is OnOff.on))
        SettingsCache(history, api.settings).remember(changed)
    _show(changed, False)
