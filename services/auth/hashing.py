"""argon2id password hashes: hash, verify-and-rehash, and a dummy verify for unknown users."""

from __future__ import annotations

import logging
import os
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
            argon2.extract_parameters(value)
        except (InvalidHashError, ValueError):
            return False
        return value.startswith(("$argon2id$", "$argon2i$", "$argon2d$"))
