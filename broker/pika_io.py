"""The only module that touches pika's private names; checked on pika 1.3.2 and 1.4.4.

Two things pika does not offer publicly, both for speed:

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

pyproject.toml pins pika to the versions these were checked against; a unit test fails if
an upgrade removes what they use.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pika
import pika.channel
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils import io_services_utils

logger = logging.getLogger(__name__)

_MARK = "_messenger_coalescing"


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
