"""`messenger`: build the app, run it at the edge that turns errors into exit codes."""

import sys

from broker.pika_io import coalesce_pika_writes
from clients.cli.app import build_app
from clients.cli.edge import run


def main() -> None:
    coalesce_pika_writes()
    sys.exit(run(build_app(), sys.argv[1:]))


if __name__ == "__main__":
    main()
