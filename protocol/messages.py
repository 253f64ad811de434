"""Bodies that travel through the broker, one pydantic model each.

Every body is JSON with `content_type` application/json and its model named by the AMQP
`type` property (see topology.TYPE_*); the protocol version travels in the
`PROTOCOL_HEADER` header. Unknown fields are ignored so an older peer can read a newer
one's messages.
"""

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from protocol.accounts import Username
from protocol.wire import WireModel

MAX_BODY_BYTES = 64 * 1024
MAX_TEXT_CHARS = 10_000
_ALLOWED_CONTROLS = {"\n", "\t"}

# AMQP header that carries protocol.PROTOCOL_VERSION on every body.
PROTOCOL_HEADER = "messenger-protocol"
# AMQP header of a send request: the client's clock, Unix milliseconds. With the client's
# message_id it makes the relay's server id the same when the relay handles a message twice.
SENT_MS_HEADER = "messenger-sent-ms"
# AMQP header of a receipt's copy for the archive: 0 when the reader turned read receipts
# off, so the archive keeps the read state for the reader's devices but never shows it to the
# original sender.
NOTIFY_SENDER_HEADER = "messenger-notify-sender"


def check_text(value: str) -> str:
    """Text is 1..10,000 characters after trimming, with no control character but \\n and \\t,
    and no lone surrogate (legal in JSON as `\\ud800`, but no UTF-8 text can hold one)."""
    stripped = value.strip()
    if not stripped:
        raise ValueError("text must not be empty")
    if len(stripped) > MAX_TEXT_CHARS:
        raise ValueError(f"text must be at most {MAX_TEXT_CHARS} characters")
    for char in stripped:
        if (ord(char) < 32 or 127 <= ord(char) < 160) and char not in _ALLOWED_CONTROLS:
            raise ValueError(f"text must not contain the control character U+{ord(char):04X}")
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise ValueError(f"text must not contain the lone surrogate U+{ord(char):04X}")
    return stripped


Text = Annotated[str, AfterValidator(check_text)]

# A client's id of its message (the AMQP message_id of a send): a UUID from our clients. It is
# shown to the recipient (`--json`), so it is held to an id alphabet, never free text.
MAX_CLIENT_ID_CHARS = 128
CLIENT_ID_RE = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_CLIENT_ID_CHARS}}}")


def check_client_id(value: str) -> str:
    """1..128 of A-Z a-z 0-9 . _ : - (a UUID fits); anything else is refused."""
    if not CLIENT_ID_RE.fullmatch(value):
        raise ValueError(
            f"client id must be 1 to {MAX_CLIENT_ID_CHARS} of A-Z, a-z, 0-9, '.', '_', ':', '-'"
        )
    return value


def is_valid_client_id(value: object) -> bool:
    return isinstance(value, str) and CLIENT_ID_RE.fullmatch(value) is not None


ClientId = Annotated[str, AfterValidator(check_client_id)]


def encode(model: BaseModel) -> bytes:
    """The wire form of a body: compact UTF-8 JSON, aliases (`from`) applied."""
    return model.model_dump_json(by_alias=True).encode()


class SendRequest(WireModel):
    """What a client publishes to the outbox. The sender is the broker-checked `user_id`."""

    to: Username
    text: Text


# rate_limited: the sender (or sender -> recipient) sent faster than the relay's limits allow.
RejectReason = Literal["unknown_recipient", "invalid", "inbox_full", "rate_limited"]


class RelayAnswer(WireModel):
    """The relay's answer on the sender's reply-to, correlated by the client's message id."""

    status: Literal["accepted", "rejected"]
    client_id: ClientId | None = None
    id: str | None = None
    sent_at: datetime | None = None
    reason: RejectReason | None = None
    detail: str | None = None


class DeliveredMessage(WireModel):
    """What lands in a recipient's inbox. `id` is the server's, time-ordered and unique."""

    id: str
    client_id: ClientId | None = None
    sender: str = Field(alias="from")
    to: str
    text: str
    sent_at: datetime

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


ReceiptStatus = Literal["delivered", "read"]


class ReceiptRequest(WireModel):
    """A recipient's receipt, published to the outbox; the relay routes it to the sender."""

    message_id: str = Field(min_length=1, max_length=128)
    to: Username
    status: ReceiptStatus
    # False when the reader turned read receipts off: the relay then tells only the reader's
    # other devices and the archive, never the original sender.
    notify_sender: bool = True


class ReceiptNotice(WireModel):
    """A receipt as it reaches the original sender's devices (and, for `read`, the reader's
    other devices). `reader` is the broker-checked `user_id` of the receipt's publisher."""

    message_id: str
    reader: str
    status: ReceiptStatus
    at: datetime
