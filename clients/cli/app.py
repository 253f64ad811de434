"""The `messenger` command: the root options, and every command group joined in."""

from __future__ import annotations

from typing import Annotated

import typer

from clients.cli import (
    account,
    chat,
    conversation,
    conversations,
    deletion,
    receiving,
    sending,
    settings,
    users,
)
from clients.cli.context import DEFAULT_SERVER, Cli
from clients.cli.edge import EXIT_CODES_HELP
from clients.library.state import Paths

HELP = """Direct messages in your terminal.

Start with `messenger signup NAME` (or `login NAME`), then `send`, `inbox`, `chat`.
State (session, history) lives under MESSENGER_HOME, or your user config/data directories.
"""


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="messenger",
        help=HELP,
        epilog=EXIT_CODES_HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        server: Annotated[
            str | None,
            typer.Option(
                "--server",
                envvar="MESSENGER_URL",
                metavar="URL",
                # the backslash: rich would take a bare [...] for markup and drop it
                help=(
                    f"The Messenger server. \\[default: where you logged in, else {DEFAULT_SERVER}]"
                ),
                show_default=False,
            ),
        ] = None,
    ) -> None:
        ctx.obj = Cli(server_option=server, paths=Paths.from_env())

    for group in (
        account,
        sending,
        receiving,
        chat,
        conversation,
        conversations,
        users,
        settings,
        deletion,
    ):
        app.add_typer(group.app)
    return app
