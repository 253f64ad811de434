"""Bodies of server-side conversations: devices, history pages, sync, settings, deletion.

The archive service stores every message and receipt the relay routes; these models are
what it serves (through the auth service's public origin) and what the auth service adds to
a login. Field names are the contract between services and clients (SPEC of issue #13).
"""

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from protocol.accounts import PASSWORD_MAX
from protocol.messages import ReceiptNotice
from protocol.wire import WireModel

# Pages of one conversation or of a sync hold at most this many messages.
PAGE_LIMIT_MAX = 200
PAGE_LIMIT_DEFAULT = 50

ArchivedStatus = Literal["accepted", "delivered", "read"]


class ArchivedMessage(WireModel):
    """One message as the archive keeps it. `status` is the recipient's state of it."""

    id: str
    client_id: str | None = None
    sender: str = Field(alias="from")
    to: str
    text: str
    sent_at: datetime
    status: ArchivedStatus = "accepted"

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ConversationSummary(WireModel):
    """One line of the conversation list: a peer, the newest message, unread count."""

    peer: str
    display_name: str | None = None
    last_message: ArchivedMessage | None = None
    unread: int = 0
    updated_at: datetime


class MessagePage(WireModel):
    """A page of one conversation, oldest to newest; `has_more` says whether the page was
    cut by its limit (more lie beyond it in the direction asked)."""

    messages: list[ArchivedMessage]
    has_more: bool


class SyncPage(WireModel):
    """Everything of one user after a cursor: messages received and sent (from any device)
    and receipts, oldest to newest."""

    messages: list[ArchivedMessage]
    receipts: list[ReceiptNotice]
    has_more: bool


class DeviceInfo(WireModel):
    """The device a login created: its queue is the one the client consumes."""

    device_id: str
    device_queue: str


class SessionCreated(DeviceInfo):
    """`POST /v1/sessions`: the token and the device it opened."""

    token: str
    expires_at: datetime


class CurrentSession(DeviceInfo):
    """`GET /v1/sessions/current`."""

    username: str
    display_name: str
    expires_at: datetime


class DeviceQueue(WireModel):
    """`PUT /v1/sessions/current/queue`: the device queue declared again."""

    device_queue: str


class AccountSettings(WireModel):
    """`GET`/`PATCH /v1/me/settings`."""

    read_receipts: bool = True


class DeleteAccountRequest(WireModel):
    """`DELETE /v1/me`: the password again, so a stolen token alone cannot delete."""

    password: str = Field(max_length=PASSWORD_MAX)
