"""Session tokens: random, shown to the client once, stored only as a SHA-256 hash.

A token carries 256 bits of randomness, so a plain (unsalted, fast) hash is enough: there is
nothing to brute-force, and the hash lets the store look a token up by equality.
"""

import hashlib
import secrets

TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
