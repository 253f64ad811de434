"""Container health checks for the service image (no curl in a slim image).

    python -m deploy.compose.healthcheck http URL        # auth: the URL answers 2xx
    python -m deploy.compose.healthcheck amqp [--port N] # relay: connected to a broker

The relay has no listener of its own; it is healthy while it holds an established TCP
connection to a broker's AMQP port, read from the container's /proc/net/tcp{,6}. Exit status
0 means healthy, 1 unhealthy (what Docker's HEALTHCHECK expects).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

TCP_ESTABLISHED = "01"
PROC_NET_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def established_to_port(proc_net_tcp_lines: Iterable[str], port: int) -> bool:
    """Whether a /proc/net/tcp table lists an ESTABLISHED connection to remote `port`."""
    for line in proc_net_tcp_lines:
        fields = line.split()
        # sl local_address rem_address st ...; addresses are HEXIP:HEXPORT
        if len(fields) < 4 or ":" not in fields[2]:
            continue
        remote_port = fields[2].rsplit(":", 1)[1]
        try:
            if int(remote_port, 16) == port and fields[3] == TCP_ESTABLISHED:
                return True
        except ValueError:
            continue
    return False


def amqp_connected(port: int, tables: Sequence[Path] = PROC_NET_TCP) -> bool:
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        if established_to_port(lines, port):
            return True
    return False


def http_ok(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="container health check")
    sub = parser.add_subparsers(dest="kind", required=True)
    http = sub.add_parser("http", help="healthy when URL answers 2xx")
    http.add_argument("url")
    amqp = sub.add_parser("amqp", help="healthy while connected to a broker's AMQP port")
    amqp.add_argument(
        "--port", type=int, default=int(os.environ.get("MESSENGER_RELAY_AMQP_PORT", "5672"))
    )
    args = parser.parse_args(argv)
    healthy = http_ok(args.url) if args.kind == "http" else amqp_connected(args.port)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
