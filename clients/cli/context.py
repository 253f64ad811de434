"""What every command needs: the server address, local state, the session, display names.

Built once per invocation by the root callback and handed to commands as `ctx.obj`.
Nothing here connects to anything until a command asks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import typer

from clients.library.accounts import AccountsClient
from clients.library.connection import RECONNECT_WINDOW_SECONDS, Connection
from clients.library.conversations import ConversationsClient
from clients.library.errors import (
    AccountDeleted,
    AuthenticationFailed,
    LoginRefused,
    MessengerError,
    NotFound,
    ServerError,
)
from clients.library.history import History
from clients.library.messaging import MessengerConnection
from clients.library.state import Paths, StoredSession, load_session, save_session
from protocol import PROTOCOL_VERSION
from protocol.accounts import Meta

DEFAULT_SERVER = "http://127.0.0.1:8080"
# How a person whose account is gone is shown (the server answers 410 for their name).
DELETED_USER = "deleted user"
NAME_LOOKUP_TIMEOUT = 3.0
# While reconnecting: `GET /v1/meta` and `GET /v1/sessions/current` must not hold it up.
RECOVERY_TIMEOUT = 2.0


@dataclass
class Cli:
    server_option: str | None
    paths: Paths
    _session: StoredSession | None = field(default=None, init=False)
    _session_loaded: bool = field(default=False, init=False)

    @property
    def session(self) -> StoredSession | None:
        if not self._session_loaded:
            self._session = load_session(self.paths)
            self._session_loaded = True
        return self._session

    @property
    def server(self) -> str:
        """`--server`/`MESSENGER_URL`, else where the session was opened, else the default."""
        if self.server_option:
            return self.server_option.rstrip("/")
        if self.session is not None:
            return self.session.server
        return DEFAULT_SERVER

    def accounts(self, timeout: float | None = None) -> AccountsClient:
        if timeout is None:
            return AccountsClient(self.server)
        return AccountsClient(self.server, timeout=timeout)

    def require_session(self) -> StoredSession:
        session = self.session
        if session is None:
            raise AuthenticationFailed(
                "you are not logged in", hint="log in with `messenger login USERNAME`"
            )
        if session.expired:
            raise AuthenticationFailed(
                f"your session as {session.username} has expired",
                hint=f"log in again with `messenger login {session.username}`",
            )
        return session

    def conversations(self, session: StoredSession) -> ConversationsClient:
        """The server's history API (and account calls) with the session's token."""
        return ConversationsClient(self.server, session.token)

    def with_device(self, session: StoredSession) -> StoredSession:
        """The session with its device: a session file written before devices existed asks
        the server once (`GET /v1/sessions/current`) and keeps the answer."""
        if session.device_queue is not None:
            return session
        try:
            with self.conversations(session) as api:
                device = api.device()
                if device is None:  # an older server: the legacy inbox, as before
                    return session
                if device.device_queue:
                    return self.save_device(session, device.device_id, device.device_queue)
                # A session from before devices: the server gives it one now.
                queue = api.redeclare_device_queue()
                device = api.device()
        except AuthenticationFailed:
            raise
        except MessengerError:
            return session
        return self.save_device(session, device.device_id if device else None, queue)

    def save_device(
        self, session: StoredSession, device_id: str | None, device_queue: str
    ) -> StoredSession:
        """Keep the session's device (queue) in the session file."""
        since = session.device_since
        if device_queue != session.device_queue:  # a new queue (again): it begins now
            since = datetime.now(UTC)
        updated = replace(
            session,
            device_id=device_id or session.device_id,
            device_queue=device_queue,
            device_since=since,
        )
        save_session(self.paths, updated)
        self._session = updated
        return updated

    def history(self, session: StoredSession) -> History:
        return History(self.paths.history_file(session.username), session.username)

    def connect(
        self,
        session: StoredSession,
        meta: Meta | None = None,
        reconnect_window: float = RECONNECT_WINDOW_SECONDS,
    ) -> MessengerConnection:
        """A broker connection as the session's user; a refused login points at `login`."""
        return MessengerConnection(self.broker(session, meta), reconnect_window)

    def broker(self, session: StoredSession, meta: Meta | None = None) -> Connection:
        """The bare connection, for whoever composes the library's parts (chat). It asks
        the server for the broker's address again when it reconnects, and whether the
        session is still valid when the broker refuses it."""
        try:
            return Connection.open(
                meta or self.meta(),
                session.username,
                session.token,
                discover=lambda: self.meta(RECOVERY_TIMEOUT),
                check_session=lambda: self.session_valid(session),
            )
        except LoginRefused as exc:
            exc.hint = (
                "your session may have expired or been revoked; log in again with"
                f" `messenger login {session.username}`"
            )
            raise

    def session_valid(self, session: StoredSession) -> bool | None:
        """What the account API says of the session: valid, gone (401), or None when it
        cannot be asked."""
        try:
            with self.accounts(RECOVERY_TIMEOUT) as accounts:
                info = accounts.current_session(session.token)
        except (AuthenticationFailed, NotFound):  # NotFound: a server without the endpoint
            return False
        except MessengerError:
            return None
        return info.username == session.username

    def meta(self, timeout: float | None = None) -> Meta:
        with self.accounts(timeout) as accounts:
            meta = accounts.meta()
        if meta.protocol_version != PROTOCOL_VERSION:
            raise ServerError(
                f"the server at {self.server} speaks protocol {meta.protocol_version},"
                f" this client speaks {PROTOCOL_VERSION}",
                hint="install the client version that matches the server",
            )
        return meta


def cli_of(ctx: typer.Context) -> Cli:
    obj = ctx.find_root().obj
    assert isinstance(obj, Cli)
    return obj


class Names:
    """Display names: this run's memory, then the local cache, then `GET /v1/users/{u}`.

    A failed lookup is never an error (the username is shown alone), and once the server
    did not answer, this run stops asking it.
    """

    def __init__(self, cli: Cli, history: History | None, token: str | None) -> None:
        self._cli = cli
        self._history = history
        self._token = token
        self._known: dict[str, str | None] = {}
        self._server_gone = False

    def __call__(self, username: str) -> str | None:
        if username in self._known:
            return self._known[username]
        name = self._history.cached_display_name(username) if self._history else None
        if name is None and not self._server_gone:
            name = self._fetch(username)
        if name is None and self._history is not None:
            name = self._history.any_display_name(username)
        self._known[username] = name
        return name

    def refresh(self, username: str) -> str | None:
        """Ask the server now, past the cache (a conversation being opened: the person
        may have changed their name, or deleted their account)."""
        if not self._server_gone:
            name = self._fetch(username)
            if name is not None:
                self._known[username] = name
                return name
        return self(username)

    def remember(self, username: str, display_name: str) -> None:
        self._known[username] = display_name
        if self._history is not None:
            self._history.remember_display_name(username, display_name)

    def _fetch(self, username: str) -> str | None:
        try:
            with self._cli.accounts(timeout=NAME_LOOKUP_TIMEOUT) as accounts:
                user = accounts.user(username, token=self._token)
        except AccountDeleted:
            # Cached like a name (for a day): the name is held for longer than that.
            if self._history is not None:
                self._history.remember_display_name(username, DELETED_USER)
            return DELETED_USER
        except NotFound:
            return None
        except MessengerError:
            self._server_gone = True
            return None
        if self._history is not None:
            self._history.remember_display_name(user.username, user.display_name)
        return user.display_name


@contextlib.contextmanager
def logged_in(cli: Cli) -> Iterator[tuple[StoredSession, History, Names]]:
    """The current session, its history database and a display-name lookup."""
    session = cli.require_session()
    with cli.history(session) as history:
        names = Names(cli, history, session.token)
        if session.display_name:
            names.remember(session.username, session.display_name)
        yield session, history, names
