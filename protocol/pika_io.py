"""One socket write per I/O turn instead of one per AMQP frame, for every pika user here.

pika queues each frame (a publish is three: method, header, body) as its own buffer and
sends them one `send()` call each. At thousands of messages a second those system calls
are most of the relay's and the client's CPU. `coalesce_pika_writes()` makes the transport
join what is queued into one buffer before it writes; bytes, order and pika's bookkeeping
are unchanged. Entry points call it once (it is idempotent); nothing happens at import.
"""

from __future__ import annotations

from typing import Any

from pika.adapters.utils import io_services_utils

_MARK = "_messenger_coalescing"


def coalesce_pika_writes() -> None:
    transport: Any = io_services_utils._AsyncTransportBase
    original = transport._produce
    if getattr(original, _MARK, False):
        return

    def _produce(self: Any) -> None:
        buffers = self._tx_buffers
        if len(buffers) > 1:
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)
        original(self)

    setattr(_produce, _MARK, True)
    transport._produce = _produce


def describe_pika_error(error: BaseException | str) -> str:
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
