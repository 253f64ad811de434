"""argon2id password hashes: hash, verify-and-rehash, and a dummy verify for unknown users."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
import threading

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from services.auth.settings import AuthSettings

logger = logging.getLogger(__name__)


class PasswordHashing:
    """One argon2id `PasswordHasher` with a cap on concurrent hashes.

    Each hash needs `memory_kib` of RAM and a core for tens of milliseconds; the semaphore
    keeps a burst of logins from multiplying that by the size of the thread pool.
    """

    def __init__(
        self,
        time_cost: int,
        memory_kib: int,
        parallelism: int,
        max_concurrent: int | None = None,
    ) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        self._slots = threading.BoundedSemaphore(max_concurrent or os.cpu_count() or 2)
        # Verified instead of a real hash when the user does not exist, so an unknown name
        # costs as much time as a wrong password.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> PasswordHashing:
        return cls(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            max_concurrent=settings.max_concurrent_hashes,
        )

    def hash(self, password: str) -> str:
        with self._slots:
            return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> tuple[bool, str | None]:
        """(matches, upgraded hash or None). `stored_hash=None` means "no such user": a
        dummy hash is verified so that the answer takes as long, and it never matches."""
        with self._slots:
            try:
                self._hasher.verify(stored_hash or self._dummy_hash, password)
            except (VerificationError, InvalidHashError):
                return False, None
            if stored_hash is None:  # pragma: no cover - the dummy password is never known
                return False, None
            if not self._hasher.check_needs_rehash(stored_hash):
                return True, None
            logger.info("upgrading a password hash to the current argon2 parameters")
            return True, self._hasher.hash(password)

    @staticmethod
    def is_valid_hash(value: str) -> bool:
        """Whether `value` is an argon2 hash string this service can verify."""
        try:
            check_argon2_hash(value)
        except ValueError:
            return False
        return True


# $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>: base64 without padding (the PHC string format)
_PHC = re.compile(
    r"\$argon2(?:id|i|d)(?:\$v=(?:16|19))?\$m=(\d{1,10}),t=(\d{1,10}),p=(\d{1,8})"
    r"\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)"
)
# Beyond these, verifying one login would take gigabytes or minutes: refused on import.
MAX_MEMORY_KIB = 1024 * 1024
MAX_TIME_COST = 1000
MAX_PARALLELISM = 64


def check_argon2_hash(value: str) -> str:
    """`value` if it is a well-formed argon2 hash of sane cost; ValueError saying why not.

    argon2-cffi's own parser reads the parameters only, so a hash with a mangled salt or
    digest would be stored and no password would ever match it.
    """
    match = _PHC.fullmatch(value)
    if match is None:
        raise ValueError(
            "password_hash is not an argon2 hash ($argon2id$v=19$m=...,t=...,p=...$salt$hash)"
        )
    memory, time_cost, parallelism = (int(group) for group in match.group(1, 2, 3))
    salt, digest = (_unpadded_b64(group) for group in match.group(4, 5))
    if salt is None or digest is None:
        raise ValueError("password_hash is not an argon2 hash: its salt or hash is not base64")
    if len(salt) < 8 or len(digest) < 4:
        raise ValueError("password_hash is not an argon2 hash: its salt or hash is too short")
    if not (1 <= parallelism <= MAX_PARALLELISM and 1 <= time_cost <= MAX_TIME_COST):
        raise ValueError("password_hash has an argon2 time cost or parallelism out of range")
    if not 8 * parallelism <= memory <= MAX_MEMORY_KIB:
        raise ValueError("password_hash has an argon2 memory cost out of range")
    return value


def _unpadded_b64(text: str) -> bytes | None:
    if len(text) % 4 == 1:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        return None
