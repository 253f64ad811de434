"""The only module that touches pika's private names; checked on pika 1.3.2 and 1.4.4.

Three things pika does not offer publicly, two for speed and one for safety:

- `coalesce_pika_writes()`: pika queues each frame (a publish is three: method, header,
  body) as its own buffer and sends them with one `send()` call each. At thousands of
  messages a second those system calls are most of the relay's and the client's CPU. The
  patch makes the transport join what is queued into one buffer before it writes; bytes,
  order and pika's bookkeeping are unchanged. Entry points call it once (it is idempotent);
  nothing happens at import, and a pika without the internals it needs is left alone.
- `async_channel()`: the asynchronous channel under a `BlockingChannel`. Its publishes only
  queue frames (written by the next I/O turn, several messages per `send()`), and it takes
  confirm and reply-to callbacks that run during any I/O turn, which `BlockingChannel`
  (one flush and poll per publish, confirms one at a time) does not.

- `guard_property_decoding()`: pika decodes a message's properties inside its frame
  decoder, before any callback runs, and some bytes a client may publish (the broker passes
  them on unchecked) make that decoder raise: a header table nested deeper than Python's
  recursion limit (RecursionError), a float header that is NaN or infinite (pika converts
  it with int(): ValueError, OverflowError), a timestamp header past year 9999
  (datetime.fromtimestamp: OverflowError), a field type it does not know
  (InvalidFieldTypeException). The exception leaves pika's I/O loop, the consumer's process
  dies, the message is delivered again, and the consumer dies again: one message stops
  every consumer of the queue for good. With the guard, `BasicProperties.decode` catches
  it, keeps what it had decoded and says why in `undecodable(properties)`; the consumer
  then decides (the relay dead-letters such a message). Invalid UTF-8 in a short string
  does not raise: pika hands it over as bytes, which the consumer must check too.

pyproject.toml pins pika to the versions these were checked against; a unit test fails if
an upgrade removes what they use.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pika
import pika.channel
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils import io_services_utils

logger = logging.getLogger(__name__)

_MARK = "_messenger_coalescing"
_GUARD_MARK = "_messenger_guarded"
# Set on a BasicProperties whose decoding raised: what went wrong.
_UNDECODABLE = "_messenger_undecodable"


def coalesce_pika_writes() -> bool:
    """Patch pika's transport to write what is queued in one call; False if it cannot."""
    transport: Any = getattr(io_services_utils, "_AsyncTransportBase", None)
    original: Any = getattr(transport, "_produce", None)
    if getattr(original, _MARK, False):
        return True
    missing = [name for name in missing_internals() if name.startswith("_AsyncTransportBase")]
    if missing:
        logger.warning("pika %s lacks %s: writes not coalesced", pika.__version__, missing)
        return False

    def _produce(self: Any) -> None:
        buffers = self._tx_buffers
        if len(buffers) > 1:
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)
        original(self)

    setattr(_produce, _MARK, True)
    setattr(_produce, "__wrapped__", original)  # noqa: B010 - missing_internals reads pika's
    transport._produce = _produce
    return True


def guard_property_decoding() -> bool:
    """Make `pika.spec.BasicProperties.decode` never raise (see the module docstring);
    idempotent. Entry points call it once, like `coalesce_pika_writes()`."""
    properties: Any = pika.spec.BasicProperties
    original: Any = properties.decode
    if getattr(original, _GUARD_MARK, False):
        return True

    def decode(self: Any, encoded: bytes, offset: int = 0) -> Any:
        try:
            return original(self, encoded, offset)
        except Exception as exc:  # RecursionError too: it is a RuntimeError
            text = f"{type(exc).__name__}: {exc}"
            setattr(self, _UNDECODABLE, text if len(text) <= 200 else text[:200] + "...")
            return self

    setattr(decode, _GUARD_MARK, True)
    setattr(decode, "__wrapped__", original)  # noqa: B010 - as in coalesce_pika_writes
    properties.decode = decode
    return True


def undecodable(properties: pika.spec.BasicProperties) -> str | None:
    """Why pika could not decode these properties (with the guard on); None if it could."""
    reason = getattr(properties, _UNDECODABLE, None)
    return reason if isinstance(reason, str) else None


def writes_coalesced() -> bool:
    transport: Any = getattr(io_services_utils, "_AsyncTransportBase", None)
    return bool(getattr(getattr(transport, "_produce", None), _MARK, False))


def missing_internals() -> list[str]:
    """What this module needs and the installed pika lacks (empty on the pinned versions)."""
    missing = []
    transport: Any = getattr(io_services_utils, "_AsyncTransportBase", None)
    if not callable(getattr(transport, "_produce", None)):
        missing.append("_AsyncTransportBase._produce")
    if "self._tx_buffers" not in _source(transport, "_produce"):
        missing.append("_AsyncTransportBase._tx_buffers")
    if "self._impl = channel_impl" not in _source(BlockingChannel, "__init__"):
        missing.append("BlockingChannel._impl")
    return missing


def _source(owner: Any, name: str) -> str:
    function = getattr(owner, name, None)
    function = getattr(function, "__wrapped__", function)  # pika's own, under our patch
    if function is None:
        return ""
    try:
        return inspect.getsource(function)
    except (TypeError, OSError):
        return ""


def async_channel(channel: BlockingChannel) -> pika.channel.Channel:
    """The asynchronous channel a blocking one drives (see the module docstring)."""
    impl: pika.channel.Channel = channel._impl
    return impl
