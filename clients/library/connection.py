"""A user's AMQP connection: open it on any node, fail over to the next, translate errors.

One `Connection` is one pika `BlockingConnection` at a time: use it from one thread (only
`wake()` may be called from another). `GET /v1/meta` lists every broker node (`amqp_urls`);
`open()` connects to the first that answers; when the connection is lost, `reconnect()`
moves to the next node (no wait until every node has failed in a row, then the capped
backoff of broker/nodes.py: 0.5 s, then every second, so a client is back within about a
second of the broker). Whoever uses the connection learns that it changed from
`generation`; what must happen on the new one before anything else (the sender publishing
again what is unanswered) is registered with `add_resume_hook()`.

All of a client's recovery is here, so every client behaves alike:
- while it waits between attempts it asks `GET /v1/meta` again (`discover`), at most every
  META_REFRESH_SECONDS: a server that came back elsewhere is found there;
- a refused login is final only when the account API says the session is gone
  (`check_session` answers False, from a 401); while it cannot say (the auth service is
  restarting, and the broker refuses every login it cannot check) it is one more failed
  attempt (LoginUnchecked);
- `outage` (outage.py) turns the attempts into a few lines a person reads.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from broker.errors import Failure, classify, describe, retryable
from broker.nodes import NodeRotation, parse_amqp_url
from broker.params import connection_parameters, node_of
from clients.library.errors import (
    BrokerRefused,
    BrokerUnreachable,
    LoginRefused,
    LoginUnchecked,
    MessengerError,
    QueueMissing,
)
from clients.library.outage import Outage, reason
from protocol.accounts import Meta, connection_name

logger = logging.getLogger(__name__)

# How long a consumer or a sender keeps reconnecting (to each node in turn) before it gives up.
RECONNECT_WINDOW_SECONDS = 60.0
# A refused connection costs the broker nothing: retrying every second brings a client back
# within about a second of the broker (and the first message with it).
RECONNECT_MAX_DELAY_SECONDS = 1.0
# While reconnecting, `GET /v1/meta` again at most this often (the broker may have moved).
META_REFRESH_SECONDS = 2.0
# `ensure_open` polls the socket (to notice a close the broker made meanwhile) only when
# the connection has seen no I/O for this long: a busy sender pays no poll per message.
IDLE_CHECK_SECONDS = 1.0
# Reconnect until stopped (RECONNECT_WINDOW_SECONDS is the default).
FOREVER = math.inf


# Answers the account API about a session: True valid, False gone (401), None unknown.
SessionCheck = Callable[[], "bool | None"]


class Connection:
    def __init__(
        self,
        nodes: Sequence[pika.ConnectionParameters],
        username: str,
        *,
        discover: Callable[[], Sequence[pika.ConnectionParameters]] | None = None,
        check_session: SessionCheck | None = None,
    ) -> None:
        """Use `open()`; this connects at once, to the first of `nodes` that answers.
        `discover()` gives the nodes anew (from `GET /v1/meta`); `check_session` see above."""
        self.username = username
        self._nodes = NodeRotation(list(nodes), max_delay=RECONNECT_MAX_DELAY_SECONDS)
        self._discover = discover
        self._discovered_at = time.monotonic()
        self._check_session = check_session
        self._resume_hooks: list[Callable[[], None]] = []
        self.outage = Outage()  # set `outage.report` to show its lines to a person
        self._pika = self._connect(deadline=None)
        self.generation = 1  # one more each time the pika connection is replaced
        self._io_at = time.monotonic()  # the last I/O turn

    @classmethod
    def open(
        cls,
        meta: Meta,
        username: str,
        secret: str,
        *,
        discover: Callable[[], Meta] | None = None,
        check_session: SessionCheck | None = None,
    ) -> Connection:
        """Log in to the broker `meta` names (any of its nodes); `secret` is a session token
        or the password; `discover()` fetches `GET /v1/meta` again. The connection is named
        after the session (protocol.accounts), so the auth service closes it when the
        session ends; log in with a token (the CLI always does): a password has no session,
        and its name's tag would be a fast hash of it that broker operators can see."""

        def nodes_of_fresh_meta() -> list[pika.ConnectionParameters]:
            assert discover is not None
            return broker_nodes(discover(), username, secret)

        return cls(
            broker_nodes(meta, username, secret),
            username,
            discover=nodes_of_fresh_meta if discover is not None else None,
            check_session=check_session,
        )

    @property
    def is_open(self) -> bool:
        return bool(self._pika.is_open)

    # -- I/O -------------------------------------------------------------------------------

    def channel(self) -> BlockingChannel:
        return self._pika.channel()

    def pump(self, time_limit: float = 0) -> None:
        """One I/O turn: write what is queued, read and dispatch what came, for up to
        `time_limit` s."""
        self._pika.process_data_events(time_limit=time_limit)
        self._io_at = time.monotonic()

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` in the next I/O turn (ends a `pump()` that waits)."""
        self._pika.call_later(0, callback)

    def wake(self) -> None:
        """From any thread: end the current `pump()` wait now."""
        with contextlib.suppress(Exception):
            self._pika.add_callback_threadsafe(lambda: None)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._pika.is_open:
                self._pika.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- failover --------------------------------------------------------------------------

    def add_resume_hook(self, hook: Callable[[], None]) -> None:
        """`hook()` runs after each `reconnect()`, before it returns; a retryable pika error
        from it counts as one more lost connection."""
        self._resume_hooks.append(hook)

    def ensure_open(
        self, window: float | None = None, interrupt: threading.Event | None = None
    ) -> None:
        """Reopen (before publishing anything) a connection the broker dropped while idle:
        one round over the nodes, or for up to `window` s (FOREVER: until `interrupt`)."""
        if self._pika.is_open:
            if time.monotonic() - self._io_at < IDLE_CHECK_SECONDS:
                return  # busy: a close would have been noticed in the last I/O turn
            with contextlib.suppress(pika.exceptions.AMQPError):
                self.pump(0)  # notice a close that already happened
        if not self._pika.is_open:
            logger.info("reconnecting to the broker")
            deadline = None if window is None else time.monotonic() + window
            self._replace(self._connect(deadline, moving_on=True, interrupt=interrupt))
            for hook in self._resume_hooks:
                hook()

    def reconnect(
        self,
        lost: BaseException,
        window: float = RECONNECT_WINDOW_SECONDS,
        interrupt: threading.Event | None = None,
    ) -> None:
        """The connection (or a channel of it) failed: connect to the next node, within
        `window` s (FOREVER: until `interrupt` is set), then run the resume hooks."""
        deadline = time.monotonic() + window
        while True:
            several = len(self._nodes.nodes) > 1
            logger.info(
                "%s%s",
                reason(lost, node_of(self._nodes.current)),
                "; moving to the next node" if several else "; connecting again",
            )
            self.close()
            self._replace(self._connect(deadline, moving_on=True, interrupt=interrupt))
            try:
                for hook in self._resume_hooks:
                    hook()
                return
            except pika.exceptions.AMQPError as exc:
                if not retryable(exc) or time.monotonic() > deadline:
                    raise
                lost = exc

    @contextlib.contextmanager
    def failover(
        self, window: float = RECONNECT_WINDOW_SECONDS, interrupt: threading.Event | None = None
    ) -> Iterator[None]:
        """Around one step: a lost connection moves to the next node; the step itself is
        not repeated (the resume hooks do what must be done again)."""
        try:
            yield
        except pika.exceptions.AMQPError as exc:
            if not retryable(exc):
                raise
            self.reconnect(exc, window, interrupt)

    @contextlib.contextmanager
    def translated_errors(self) -> Iterator[None]:
        """pika's errors become the library's (clients/library/errors.py)."""
        try:
            yield
        except MessengerError:
            raise
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise _channel_error(exc, self.username) from None
        except pika.exceptions.AMQPConnectionError as exc:
            raise _connection_error(exc, self._nodes.current, self.username) from None
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnreachable(
                f"lost the connection to the broker ({describe(exc)})"
            ) from None

    def _replace(self, connection: pika.BlockingConnection) -> None:
        self._pika = connection
        self.generation += 1
        self._io_at = time.monotonic()

    def _connect(
        self,
        deadline: float | None,
        moving_on: bool = False,
        interrupt: threading.Event | None = None,
    ) -> pika.BlockingConnection:
        """Connect to the current node, or the ones after it. `moving_on`: the current node
        just failed, start with the next. Without a `deadline`, one round over the nodes;
        with one, rounds (with growing pauses) until it passes. A refused login is final
        once the account API says the session is gone (see the module's docstring)."""
        delay = self._nodes.failed() if moving_on else 0.0
        errors: dict[str, BrokerUnreachable] = {}
        last: BaseException | None = None
        while True:
            if self._nodes.round_failed and errors:
                if deadline is None or time.monotonic() + delay > deadline:
                    raise _unreachable(errors)
                assert last is not None
                self.outage.failed(reason(last, next(reversed(errors))), delay)
                if interrupt is None:
                    time.sleep(delay)
                elif interrupt.wait(delay):
                    raise BrokerUnreachable("stopped while reconnecting to the broker")
                self._rediscover()
            parameters = self._nodes.current
            where = node_of(parameters)
            try:
                connection = pika.BlockingConnection(parameters)
            except pika.exceptions.ProbableAuthenticationError as exc:
                refused = _connection_error(exc, parameters, self.username)
                valid = self._session_check()
                if valid is False:
                    raise refused from None
                why = "the session is valid" if valid else "its account service does not answer"
                last = errors[where] = LoginUnchecked(
                    f"the server at {where} cannot check logins right now ({why})",
                    hint="nothing was sent; try again in a moment",
                )
            except pika.exceptions.AMQPError as exc:
                error = _connection_error(exc, parameters, self.username)
                if not isinstance(error, BrokerUnreachable):
                    raise error from None
                errors[where], last = error, exc
            else:
                self._nodes.succeeded()
                if errors:
                    logger.info("connected to the broker at %s", where)
                self.outage.recovered()
                return connection
            delay = self._nodes.failed()

    def session_check(self) -> bool | None:
        """The account API's word on the session (see `_session_check`)."""
        return self._session_check()

    def _session_check(self) -> bool | None:
        """After a refused login, the account API's word on the session: False (a 401)
        makes the refusal final; True or None (it cannot be asked) make it one more failed
        attempt. Without anybody to ask (a password login, a test), the broker is right."""
        if self._check_session is None:
            return False
        try:
            valid = self._check_session()
        except MessengerError:
            valid = None
        if valid is not False:
            logger.info(
                "the broker refused the login of a session that is %s",
                "valid" if valid else "not known to be invalid",
            )
        return valid

    def _rediscover(self) -> None:
        """Ask `GET /v1/meta` again (at most every META_REFRESH_SECONDS); move to the nodes
        it names if they changed. A server that does not answer leaves the nodes as they are."""
        if self._discover is None:
            return
        if time.monotonic() - self._discovered_at < META_REFRESH_SECONDS:
            return
        self._discovered_at = time.monotonic()
        try:
            nodes = list(self._discover())
        except MessengerError as exc:
            logger.debug("GET /v1/meta failed while reconnecting: %s", exc)
            return
        if [_address(n) for n in nodes] != [_address(n) for n in self._nodes.nodes]:
            logger.info("the server moved its broker to %s", ", ".join(map(node_of, nodes)))
            self._nodes = NodeRotation(nodes, max_delay=RECONNECT_MAX_DELAY_SECONDS)


def broker_nodes(meta: Meta, username: str, secret: str) -> list[pika.ConnectionParameters]:
    """The connection parameters of every node `meta` names, logged in as `username`."""
    nodes = []
    for url in meta.broker_urls():
        try:
            node = parse_amqp_url(url)
        except ValueError:
            raise BrokerUnreachable(
                f"the server announced an unusable broker URL {url!r}"
            ) from None
        nodes.append(
            connection_parameters(
                node,
                vhost=meta.vhost,
                username=username,
                password=secret,
                # The auth service closes it when the session ends (protocol.accounts).
                name=connection_name(username, secret),
                heartbeat=60,
                blocked_connection_timeout=30,
            )
        )
    return nodes


def _address(parameters: pika.ConnectionParameters) -> tuple[str, int, str]:
    return (parameters.host, parameters.port, parameters.virtual_host)


def _unreachable(errors: dict[str, BrokerUnreachable]) -> BrokerUnreachable:
    """One node: its own error. Several: what each said, in one line."""
    if len(errors) == 1:
        return next(iter(errors.values()))
    reasons = "; ".join(f"{where}: {describe(exc)}" for where, exc in errors.items())
    return BrokerUnreachable(
        f"cannot reach any broker node ({reasons})", hint="is the server running?"
    )


def _connection_error(
    exc: pika.exceptions.AMQPError, parameters: pika.ConnectionParameters, username: str
) -> MessengerError:
    where = node_of(parameters)
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return LoginRefused(
            f"the broker at {where} refused the login of {username!r}",
            hint="log in again: the session may have expired or been revoked",
        )
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return BrokerRefused(f"the broker at {where} denied {username!r} access to its vhost")
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        if classify(exc) is Failure.REFUSED:
            return BrokerRefused(f"the broker refused {username!r}: {exc.reply_text}")
        return BrokerUnreachable(f"{reason(exc, where)} ({exc.reply_text})")
    return BrokerUnreachable(reason(exc, where), hint="is the server running?")


def _channel_error(exc: pika.exceptions.ChannelClosedByBroker, username: str) -> MessengerError:
    failure = classify(exc)
    if failure is Failure.MISSING:
        return QueueMissing(
            f"the broker has no inbox for {username!r} ({exc.reply_text})",
            hint="sign up first, or ask the operator to re-import the user",
        )
    if failure is Failure.REFUSED:
        return BrokerRefused(f"the broker refused the operation: {exc.reply_text}")
    return BrokerUnreachable(f"the broker closed the channel: {exc.reply_text}")
