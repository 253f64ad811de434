"""The server id of a message, as both ends derive it.

The relay stamps a message a client sent with an id and a send time with an id computed
from them, so a message relayed twice keeps one id; the client computes the same id, so it
knows a message's id even when the relay's answer never reached it.
"""

import hashlib
import uuid

RANDOM_BITS = 74


def stable_id(sender: str, client_id: str, client_ms: int) -> str:
    """The server id of a message a client sent with an id and a send time (RFC 9562 UUIDv8,
    laid out like v7): 48 bits of the client's milliseconds, then 74 bits of
    sha256(sender, client id).

    The same outbox message relayed twice (a relay died before acking it) gets the same id,
    so the recipient's dedup by id shows it once. The sender is hashed in, so nobody can
    make an id collide with another sender's; a sender reusing its own client ids only
    merges its own messages.
    """
    digest = hashlib.sha256(f"{sender}\0{client_id}".encode()).digest()
    bits = int.from_bytes(digest[:10], "big") >> (80 - RANDOM_BITS)
    rand_a = bits >> 62
    rand_b = bits & ((1 << 62) - 1)
    value = (client_ms & ((1 << 48) - 1)) << 80 | 0x8 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
