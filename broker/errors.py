"""What a pika error means to whoever got it, decided by exception class and AMQP reply code.

Every caller asks the same questions: was the login refused (a wrong password does not fix
itself), is the failure worth another try on this node or the next (a lost connection, a
queue whose node is down), or did the broker refuse what we asked (our own bug, or no
permission: retrying changes nothing)? `classify()` answers them once for everybody.

One answer needs the reply text: RabbitMQ closes a channel with 404 NOT_FOUND both for a
queue that does not exist and for a durable classic queue whose home node is down ("home
node 'x' of durable queue 'y' in vhost 'z' is down or inaccessible"). AMQP 0-9-1 gives no
other signal, so `queue_missing()` looks at the text of a 404, and only of a 404.
"""

from __future__ import annotations

import enum

import pika.exceptions
import pika.spec

# The one phrase RabbitMQ (checked on 3.10.8) puts in a 404 for a queue whose node is down.
_HOME_NODE_DOWN = "down or inaccessible"
# Codes that answer a request of ours: no permission, wrong arguments, not allowed.
_REFUSALS = frozenset(
    {pika.spec.ACCESS_REFUSED, pika.spec.PRECONDITION_FAILED, pika.spec.NOT_ALLOWED}
)


class Failure(enum.Enum):
    LOGIN_REFUSED = "login refused"  # wrong credentials, or no access to the vhost
    REFUSED = "refused"  # 403, 406, 530: the broker said no to what we asked
    MISSING = "missing"  # 404: no such queue
    TRANSIENT = "transient"  # lost or closed connection, a queue's node down: try again
    OTHER = "other"  # not a pika error at all


def classify(error: BaseException) -> Failure:
    if isinstance(
        error,
        pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError,
    ):
        return Failure.LOGIN_REFUSED
    if isinstance(
        error, pika.exceptions.ChannelClosedByBroker | pika.exceptions.ConnectionClosedByBroker
    ):
        if error.reply_code in _REFUSALS:
            return Failure.REFUSED
        if queue_missing(error.reply_code, str(error.reply_text)):
            return Failure.MISSING
        return Failure.TRANSIENT
    if isinstance(error, pika.exceptions.AMQPError):
        return Failure.TRANSIENT
    return Failure.OTHER


def retryable(error: BaseException) -> bool:
    """A failure another node (or the same one, later) may not have."""
    return classify(error) is Failure.TRANSIENT


def queue_missing(reply_code: int | None, reply_text: str) -> bool:
    """The broker closed a channel because the queue does not exist (and not because its
    home node is down: that 404 comes and goes with the node)."""
    return reply_code == pika.spec.NOT_FOUND and _HOME_NODE_DOWN not in reply_text


def reply_code(error: BaseException) -> int | None:
    """The AMQP reply code a close carried, if any."""
    code = getattr(error, "reply_code", None)
    return code if isinstance(code, int) else None


def connection_lost(error: BaseException) -> bool:
    """The socket went (the node died or the network broke), as opposed to a close."""
    return isinstance(error, pika.exceptions.StreamLostError)


def describe(error: BaseException | str) -> str:
    """A readable reason: pika wraps the socket error that matters in layers of its own
    (AMQPConnectionError -> AMQPConnectionWorkflowFailed -> ...SocketConnectError)."""
    if isinstance(error, str):
        return error
    cause: BaseException = error
    for _ in range(5):
        nested = getattr(cause, "exceptions", None)  # AMQPConnectionWorkflowFailed
        inner = getattr(cause, "exception", None)  # AMQPConnectorPhaseErrorBase
        if nested:
            cause = nested[-1]
        elif isinstance(inner, BaseException):
            cause = inner
        elif cause.args and isinstance(cause.args[0], BaseException):
            cause = cause.args[0]
        else:
            break
    text = str(cause) or type(cause).__name__
    return text if len(text) < 300 else text[:300] + "..."
