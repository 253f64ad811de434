"""Sign-up, login, logout and broker login: the account logic, free of HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from protocol.accounts import (
    SessionInfo,
    SignupRequest,
    UserPublic,
    is_valid_username,
    session_tag_of_hash,
)
from protocol.conversations import AccountSettings, CurrentSession, SessionCreated
from protocol.topology import device_queue, new_device_id
from services.auth import permissions
from services.auth.errors import (
    AccountDeleted,
    BrokerUnavailable,
    InvalidCredentials,
    NameHeld,
    RateLimited,
    UnknownUser,
    UsernameTaken,
    WrongPassword,
)
from services.auth.hashing import PasswordHashing
from services.auth.inboxes import Inboxes
from services.auth.ratelimit import LoginLimiter, TokenBucket
from services.auth.store import SessionRecord, Store, UserRecord
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
        deleted_name_hold_seconds: float = 30 * 24 * 3600,
        forget_archive: Callable[[str], None] = lambda username: None,
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
        self.deleted_name_hold_seconds = deleted_name_hold_seconds
        # Removes a deleted user's own data from the archive; raises when it cannot.
        self._forget_archive = forget_archive

    def sign_up(self, request: SignupRequest) -> UserPublic:
        """Create the user. The inbox is declared first: when the broker is down this raises
        BrokerUnavailable and no user row is written."""
        if self.store.get_user(request.username) is not None:
            raise UsernameTaken(request.username)
        self._check_not_held(request.username)
        password_hash = self.hashing.hash(request.password)
        self.inboxes.declare(request.username)
        record = UserRecord(request.username, request.display_name, password_hash, self._clock())
        if not self.store.add_user(record):  # somebody was quicker
            raise UsernameTaken(request.username)
        logger.info("signed up %s", request.username)
        return UserPublic(username=record.username, display_name=record.display_name)

    def log_in(self, username: str, password: str, address: str | None) -> SessionCreated:
        """A new session, and its device queue, for the right password. Unknown user and
        wrong password raise the same InvalidCredentials after about the same time;
        RateLimited while throttled (ratelimit.py: a delay per name and address, budgets for
        strangers); BrokerUnavailable when the device queue cannot be made."""
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
        device_id = new_device_id()
        queue = self.inboxes.declare_device(username, device_id)
        self.store.add_session(token_hash(token), username, expires_at, device_id)
        logger.info("%s logged in from %s", username, address)
        return SessionCreated(
            token=token,
            expires_at=datetime.fromtimestamp(expires_at, UTC),
            device_id=device_id,
            device_queue=queue,
        )

    def log_out(self, token: str) -> None:
        """Revoke the session, close its connections, and delete its device queue (with
        what it still held)."""
        hashed = token_hash(token)
        session = self.store.take_session(hashed)
        if session is None:
            raise InvalidCredentials()
        logger.info("a session of %s was revoked", session.username)
        if self.on_session_end is not None:
            self.on_session_end(session.username, session_tag_of_hash(hashed))
        self._delete_device(session)

    def live_session_tags(self, username: str) -> set[str]:
        """The connection tags of `username`'s live sessions (protocol.accounts)."""
        hashes = self.store.live_session_hashes(username, self._clock())
        return {session_tag_of_hash(hashed) for hashed in hashes}

    def delete_expired_sessions(self) -> int:
        """Delete expired sessions and their device queues; how many sessions went (the
        session sweeper calls it; their connections are closed by the sweep after it)."""
        expired = self.store.take_expired_sessions(self._clock())
        for session in expired:
            try:
                self._delete_device(session)
            except BrokerUnavailable:  # x-expires removes it later in any case
                logger.warning("could not delete an expired device queue of %s", session.username)
        if expired:
            logger.info("swept %d expired sessions", len(expired))
        return len(expired)

    sweep_expired_sessions = delete_expired_sessions

    def session_user(self, token: str) -> str | None:
        return self.store.session_user(token_hash(token), self._clock())

    def current_session(self, token: str) -> CurrentSession:
        session, user = self._session(token)
        device_id = session.device_id or ""
        return CurrentSession(
            username=user.username,
            display_name=user.display_name,
            device_id=device_id,
            device_queue=device_queue(user.username, device_id) if device_id else "",
            expires_at=datetime.fromtimestamp(session.expires_at, UTC),
        )

    def redeclare_device(self, token: str) -> str:
        """Declare this session's device queue again (it expired, or was lost); its name.
        A session from before devices gets a device now."""
        session, user = self._session(token)
        device_id = session.device_id or new_device_id()
        queue = self.inboxes.declare_device(user.username, device_id)
        if not session.device_id:
            self.store.set_session_device(token_hash(token), device_id)
        return queue

    def settings(self, token: str) -> AccountSettings:
        _, user = self._session(token)
        return AccountSettings(read_receipts=self.store.read_receipts(user.username))

    def change_settings(self, token: str, settings: AccountSettings) -> AccountSettings:
        _, user = self._session(token)
        self.store.set_read_receipts(user.username, settings.read_receipts)
        return settings

    def delete_account(self, token: str, password: str) -> None:
        """Remove the account: its archive (read state, notes to self), every device queue,
        its anchor, sessions, settings; then hold the name. WrongPassword when the password
        is not the account's (nothing changed). The archive goes first: if it cannot be
        reached this raises and nothing is changed."""
        _, user = self._session(token)
        ok, _ = self.hashing.verify(user.password_hash, password)
        if not ok:
            self.limiter.record_failure(user.username, None)
            raise WrongPassword()
        self._forget_archive(user.username)
        for each in self.store.user_sessions(user.username):
            self._delete_device(each)
        self.inboxes.delete_user(user.username)
        now = self._clock()
        hashes = self.store.live_session_hashes(user.username, now)
        self.store.delete_user(user.username, now, now + self.deleted_name_hold_seconds)
        logger.info("deleted the account %s", user.username)
        if self.on_session_end is not None:  # every session's connections close now
            for hashed in hashes:
                self.on_session_end(user.username, session_tag_of_hash(hashed))

    def session_info(self, token: str) -> SessionInfo | None:
        """Whose live session `token` is, and until when; None for an unknown, expired or
        revoked one."""
        found = self.store.session(token_hash(token), self._clock())
        if found is None:
            return None
        return SessionInfo(
            username=found.username, expires_at=datetime.fromtimestamp(found.expires_at, UTC)
        )

    def user(self, username: str) -> UserPublic:
        record = self.store.get_user(username)
        if record is None:
            if self.store.deleted_name(username) is not None:
                raise AccountDeleted(username)
            raise UnknownUser(username)
        return UserPublic(username=record.username, display_name=record.display_name)

    def display_name(self, username: str) -> str | None:
        """A user's display name; None for a deleted (or unknown) one."""
        record = self.store.get_user(username)
        return record.display_name if record is not None else None

    def known_name(self, username: str) -> bool:
        """A user, or a deleted account whose conversations stay in others' history."""
        if self.store.get_user(username) is not None:
            return True
        return self.store.deleted_name(username) is not None

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

    def _session(self, token: str) -> tuple[SessionRecord, UserRecord]:
        session = self.store.session(token_hash(token), self._clock())
        user = self.store.get_user(session.username) if session is not None else None
        if session is None or user is None:
            raise InvalidCredentials()
        return session, user

    def _delete_device(self, session: SessionRecord) -> None:
        if session.device_id:
            self.inboxes.delete_device(device_queue(session.username, session.device_id))

    def _check_not_held(self, username: str) -> None:
        held = self.store.deleted_name(username)
        if held is None:
            return
        if held[1] > self._clock():
            raise NameHeld(username, held[1])
        self.store.release_name(username)

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
