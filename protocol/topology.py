"""Every broker name in one place, so relay, auth, client and tests cannot drift apart.

The outbox is a consistent-hash exchange over OUTBOX_SHARDS queues, each with a single
active consumer: a sender's messages (routing key = sender) always land in the same shard
and are relayed by one worker at a time, so several relay replicas keep per-sender order.
The shard count is fixed by deploy/rabbitmq/definitions.json.
"""

import secrets

VHOST = "messenger"

OUTBOX_EXCHANGE = "outbox"
INBOX_EXCHANGE = "inbox"
DEAD_LETTER_EXCHANGE = "relay.dead"
DEAD_LETTER_QUEUE = "relay.dead"
OUTBOX_SHARDS = 4

# RabbitMQ's direct reply-to pseudo-queue: the relay answers a sender here.
REPLY_TO = "amq.rabbitmq.reply-to"

INBOX_PREFIX = "inbox."  # legacy per-user inboxes, drained once by their owner's client
USER_PREFIX = "user."  # anchor queues: make a publish to an existing user routable
DEVICE_PREFIX = "device."  # one durable queue per login (device = session)

# Every message and receipt the relay routes is copied here for the archive service.
ARCHIVE_EXCHANGE = "archive"
ARCHIVE_QUEUE = "archive.ingest"

DEVICE_ID_CHARS = 26  # 130 random bits in lowercase base32

# AMQP `type` property of every message: says which pydantic model the body holds.
TYPE_SEND = "messenger.send"
TYPE_RECEIPT = "messenger.receipt"
TYPE_ANSWER = "messenger.answer"
TYPE_MESSAGE = "messenger.message"
TYPE_RECEIPT_NOTICE = "messenger.receipt-notice"

CONTENT_TYPE = "application/json"

_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def inbox_queue(username: str) -> str:
    """The durable queue that holds what is waiting for `username`."""
    return f"{INBOX_PREFIX}{username}"


def user_anchor_queue(username: str) -> str:
    """The anchor of `username`: bound to `inbox`, holds nothing (x-max-length 0), so a
    publish to a user who never logged in is still routable ("unroutable" = no such user)."""
    return f"{USER_PREFIX}{username}"


def new_device_id() -> str:
    """26 lowercase base32 characters of 130 random bits: an unguessable queue name part."""
    value = secrets.randbits(DEVICE_ID_CHARS * 5)
    return "".join(_BASE32[(value >> (5 * i)) & 31] for i in range(DEVICE_ID_CHARS))


def is_device_id(value: str) -> bool:
    return len(value) == DEVICE_ID_CHARS and all(char in _BASE32 for char in value)


def device_queue(username: str, device_id: str) -> str:
    """The durable queue of one device (login) of `username`, bound with key `username`."""
    return f"{DEVICE_PREFIX}{username}.{device_id}"


def carbon_key(username: str) -> str:
    """The `inbox` routing key of copies meant for `username`'s own devices only (carbons of
    what they sent, their own read receipts). Device queues are bound with it as well as with
    `username`; legacy inboxes and anchors are not, so a client that still consumes
    `inbox.<name>` never sees them. `/` cannot occur in a username."""
    return f"{username}/carbon"


def outbox_queue(shard: int) -> str:
    return f"relay.outbox.{shard}"


OUTBOX_QUEUES = tuple(outbox_queue(i) for i in range(OUTBOX_SHARDS))
