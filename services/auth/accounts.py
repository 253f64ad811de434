"""Sign-up, login, logout and broker login: the account logic, free of HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from protocol.accounts import (
    Session,
    SignupRequest,
    UserPublic,
    is_valid_username,
    session_tag_of_hash,
)
from services.auth import permissions
from services.auth.errors import InvalidCredentials, RateLimited, UnknownUser, UsernameTaken
from services.auth.hashing import PasswordHashing
from services.auth.inboxes import Inboxes
from services.auth.ratelimit import LoginLimiter, TokenBucket
from services.auth.store import Store, UserRecord
from services.auth.tokens import new_token, token_hash

logger = logging.getLogger(__name__)


class StoredAddresses:
    """The known addresses of ratelimit.py, kept in the user store (they outlive a restart)."""

    def __init__(
        self, store: Store, remember_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.remember_seconds = remember_seconds
        self._clock = clock

    def add(self, username: str, address: str) -> None:
        self.store.remember_address(username, address, self._clock())

    def __contains__(self, pair: tuple[str, str | None]) -> bool:
        username, address = pair
        if address is None:
            return False
        return self.store.address_known(username, address, self._clock() - self.remember_seconds)


class Accounts:
    def __init__(
        self,
        store: Store,
        hashing: PasswordHashing,
        limiter: LoginLimiter,
        inboxes: Inboxes,
        token_ttl_seconds: int,
        clock: Callable[[], float] = time.time,
        broker_password_checks: TokenBucket | None = None,
        on_session_end: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        # Called with (username, session tag) once a session is revoked: closes its
        # connections (services/auth/connections.py).
        self.on_session_end = on_session_end
        # Broker logins with a password are verified at most this fast, all names together:
        # RabbitMQ does not tell us the client's address, so nothing else bounds them.
        self.broker_password_checks = broker_password_checks or TokenBucket(rate=5, burst=20)
        self.hashing = hashing
        self.limiter = limiter
        self.inboxes = inboxes
        self.token_ttl_seconds = token_ttl_seconds
        self._clock = clock

    def sign_up(self, request: SignupRequest) -> UserPublic:
        """Create the user. The inbox is declared first: when the broker is down this raises
        BrokerUnavailable and no user row is written."""
        if self.store.get_user(request.username) is not None:
            raise UsernameTaken(request.username)
        password_hash = self.hashing.hash(request.password)
        self.inboxes.declare(request.username)
        record = UserRecord(request.username, request.display_name, password_hash, self._clock())
        if not self.store.add_user(record):  # somebody was quicker
            raise UsernameTaken(request.username)
        logger.info("signed up %s", request.username)
        return UserPublic(username=record.username, display_name=record.display_name)

    def log_in(self, username: str, password: str, address: str | None) -> Session:
        """A new session for the right password. Unknown user and wrong password raise the
        same InvalidCredentials after about the same time; RateLimited while throttled
        (ratelimit.py: a delay per name and address, budgets for strangers)."""
        retry_after = self.limiter.retry_after(username, address)
        if retry_after is not None:
            logger.warning("login for %r from %s refused: rate-limited", username, address)
            raise RateLimited(retry_after)
        if not is_valid_username(username):  # cannot exist: no hash to run, a failure all the same
            self.limiter.record_failure(username, address)
            logger.info("failed login for %r from %s: not a user name", username, address)
            raise InvalidCredentials()
        if not self._check_password(username, password, address):
            raise InvalidCredentials()
        self.limiter.record_success(username, address)
        token = new_token()
        now = self._clock()
        expires_at = now + self.token_ttl_seconds
        self.store.delete_expired_sessions(now)
        self.store.add_session(token_hash(token), username, expires_at)
        logger.info("%s logged in from %s", username, address)
        return Session(token=token, expires_at=datetime.fromtimestamp(expires_at, UTC))

    def log_out(self, token: str) -> None:
        hashed = token_hash(token)
        username = self.store.session_owner(hashed)
        if not self.store.delete_session(hashed):
            raise InvalidCredentials()
        logger.info("a session of %s was revoked", username)
        if username is not None and self.on_session_end is not None:
            self.on_session_end(username, session_tag_of_hash(hashed))

    def live_session_tags(self, username: str) -> set[str]:
        """The connection tags of `username`'s live sessions (protocol.accounts)."""
        hashes = self.store.live_session_hashes(username, self._clock())
        return {session_tag_of_hash(hashed) for hashed in hashes}

    def delete_expired_sessions(self) -> int:
        return self.store.delete_expired_sessions(self._clock())

    def session_user(self, token: str) -> str | None:
        return self.store.session_user(token_hash(token), self._clock())

    def user(self, username: str) -> UserPublic:
        record = self.store.get_user(username)
        if record is None:
            raise UnknownUser(username)
        return UserPublic(username=record.username, display_name=record.display_name)

    def broker_login(self, username: str, secret: str) -> bool:
        """Whether RabbitMQ may let `username` in with `secret`: a live session token of
        that user, or the password. Refusals are cheap: a token is a hash lookup, a name that
        is no user's is refused without running argon2, and password checks are throttled
        per name and bounded in all (`broker_password_checks`). While limited, only a token
        is accepted (a token cannot be guessed, and this keeps a password-guessing stranger
        from locking out a logged-in user's client)."""
        if not permissions.may_log_in_as(username):
            logger.info("broker login as %r denied: not a user name", username)
            return False
        if self.session_user(secret) == username:
            return True
        if self.store.get_user(username) is None:
            logger.info("broker login as %r denied: no such user", username)
            return False
        if self.limiter.retry_after(username, None) is not None:
            logger.warning("broker login as %s denied: rate-limited", username)
            return False
        if not self.broker_password_checks.take():
            logger.warning("broker login as %s denied: too many password logins at once", username)
            return False
        if not self._check_password(username, secret, None):
            return False
        self.limiter.record_success(username, None)
        logger.info("broker login as %s with the password", username)
        return True

    def _check_password(self, username: str, password: str, address: str | None) -> bool:
        record = self.store.get_user(username)
        ok, upgraded = self.hashing.verify(record.password_hash if record else None, password)
        if not ok or record is None:
            self.limiter.record_failure(username, address)
            logger.info("failed login for %r from %s", username, address or "the broker")
            return False
        if upgraded is not None:
            self.store.set_password_hash(username, upgraded)
        return True
