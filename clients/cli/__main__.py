"""`messenger`: build the app, run it at the edge that turns errors into exit codes."""

import sys

from clients.cli.app import build_app
from clients.cli.edge import run


def main() -> None:
    sys.exit(run(build_app(), sys.argv[1:]))


if __name__ == "__main__":
    main()
