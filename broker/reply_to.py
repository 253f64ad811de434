"""Direct reply-to addresses: which the relay may answer, and which node they belong to.

A client that consumes `amq.rabbitmq.reply-to` and publishes with `reply_to` set to it gets
its message delivered with the address rewritten by the broker to
`amq.rabbitmq.reply-to.<base64 Erlang pid>.<key>`; a publish to that address through the
default exchange reaches the client's channel.
"""

from __future__ import annotations

import base64
import binascii

from protocol.topology import REPLY_TO

_PREFIX = REPLY_TO + "."
MAX_ADDRESS_CHARS = 512


def answerable(address: str | None) -> bool:
    """Only a direct reply-to is answered: any other name would let a sender make the relay
    write into a queue of its choosing through the default exchange."""
    if not address:
        return False
    return address.startswith(_PREFIX) and len(address) < MAX_ADDRESS_CHARS


def reply_to_node(address: str | None) -> str | None:
    """The node named in a direct reply-to address, None for any other address (or one
    whose pid is not exactly a pid).

    The pid is in Erlang's external term format, its node an atom: the real node name
    (RabbitMQ before 3.10), or a stand-in `reply@<hash of the node name>` (3.10+). Either is
    stable for a node.
    """
    if not address or not address.startswith(_PREFIX):
        return None
    encoded = address[len(_PREFIX) :].split(".", 1)[0]
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return None
    # 131 (version), 88 NEW_PID_EXT or 103 PID_EXT, then the node atom
    if len(raw) < 4 or raw[0] != 131 or raw[1] not in (88, 103):
        return None
    tag = raw[2]
    if tag in (118, 100):  # ATOM_UTF8_EXT, ATOM_EXT: 2-byte length
        length, start = int.from_bytes(raw[3:5], "big"), 5
    elif tag in (119, 115):  # SMALL_ATOM_UTF8_EXT, SMALL_ATOM_EXT: 1-byte length
        length, start = raw[3], 4
    else:
        return None
    name = raw[start : start + length]
    # then ID, serial, creation: 4 + 4 + 4 bytes (NEW_PID_EXT) or 4 + 4 + 1 (PID_EXT), and
    # nothing more: a pid the broker cannot decode must not count as one of a known node
    if len(name) != length or not name or len(raw) != start + length + (12 if raw[1] == 88 else 9):
        return None
    return name.decode("utf-8", errors="replace")
