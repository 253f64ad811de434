"""Connection parameters for one broker node, built in one place for every process.

The defaults are what every long-lived connection here wants: one connect attempt per call
(failover and backoff are ours, nodes.py), a 5 s socket timeout so a dead node is noticed
fast, and a connection name that says who it is in the broker's connection list.
"""

from __future__ import annotations

import pika

Node = tuple[str, int]


def connection_parameters(
    node: Node,
    *,
    vhost: str,
    username: str,
    password: str,
    name: str | None = None,
    heartbeat: int | None = None,
    blocked_connection_timeout: float | None = None,
    stack_timeout: float | None = None,
    socket_timeout: float = 5,
    connection_attempts: int = 1,
    retry_delay: float = 2.0,
) -> pika.ConnectionParameters:
    """`heartbeat` None: the broker's proposal; `blocked_connection_timeout` None: wait for
    an alarm to clear for as long as it lasts; `stack_timeout` None: pika's default."""
    host, port = node
    optional: dict[str, object] = {}
    if heartbeat is not None:
        optional["heartbeat"] = heartbeat
    if blocked_connection_timeout is not None:
        optional["blocked_connection_timeout"] = blocked_connection_timeout
    if stack_timeout is not None:
        optional["stack_timeout"] = stack_timeout
    if name is not None:
        optional["client_properties"] = {"connection_name": name}
    return pika.ConnectionParameters(
        host=host,
        port=port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(username, password),
        connection_attempts=connection_attempts,
        retry_delay=retry_delay,
        socket_timeout=socket_timeout,
        **optional,
    )


def node_of(parameters: pika.ConnectionParameters) -> str:
    """`host:port`, for messages."""
    return f"{parameters.host}:{parameters.port}"
