"""`make import FILE=users.json`: import users into the Messenger that `make run` runs here.

`messenger-auth import` needs the instance's settings: where the user store is, where the
broker listens and the password of the broker's `auth` service account, which `make run`
generates afresh at every start. The running `make run` writes them to its data directory
(deploy/run_state.py); this reads them from there and runs the import with them, so the
operator types one command and never handles the password. With docker compose instead,
the command is `docker compose exec -T auth messenger-auth import - < users.json`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from deploy import run_state
from deploy.run import load_settings
from services.logs import configure_logging

logger = logging.getLogger("messenger.import")

FORMAT_DOC = "docs/operations.md#importing-users"


def main(
    file: Annotated[Path, typer.Argument(help=f'JSON file {{"users": [...]}} ({FORMAT_DOC})')],
    cluster: Annotated[
        bool, typer.Option("--cluster", help="The instance of `make run CLUSTER=1`.")
    ] = False,
) -> None:
    """Import users from FILE into the running `make run` (accounts and their inboxes)."""
    configure_logging()
    data_dir = load_settings().instance_dir(cluster)
    state = run_state.read(data_dir)
    if state is None:
        logger.error(
            "no Messenger runs on %s: start it with `make run%s` (same MESSENGER_RUN_DATA_DIR), "
            "then import; with docker compose: "
            "docker compose exec -T auth messenger-auth import - < %s",
            data_dir,
            " CLUSTER=1" if cluster else "",
            file,
        )
        raise typer.Exit(2)
    command = [sys.executable, "-m", "services.auth", "import", str(file)]
    result = subprocess.run(command, env={**os.environ, **state.auth_env}, check=False)
    raise typer.Exit(result.returncode)


if __name__ == "__main__":
    typer.run(main)
