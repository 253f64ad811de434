"""Every broker name in one place, so relay, auth, client and tests cannot drift apart.

The outbox is a consistent-hash exchange over OUTBOX_SHARDS queues, each with a single
active consumer: a sender's messages (routing key = sender) always land in the same shard
and are relayed by one worker at a time, so several relay replicas keep per-sender order.
The shard count is fixed by deploy/rabbitmq/definitions.json.
"""

VHOST = "messenger"

OUTBOX_EXCHANGE = "outbox"
INBOX_EXCHANGE = "inbox"
DEAD_LETTER_EXCHANGE = "relay.dead"
DEAD_LETTER_QUEUE = "relay.dead"
OUTBOX_SHARDS = 4

# RabbitMQ's direct reply-to pseudo-queue: the relay answers a sender here.
REPLY_TO = "amq.rabbitmq.reply-to"

INBOX_PREFIX = "inbox."

# AMQP `type` property of every message: says which pydantic model the body holds.
TYPE_SEND = "messenger.send"
TYPE_RECEIPT = "messenger.receipt"
TYPE_ANSWER = "messenger.answer"
TYPE_MESSAGE = "messenger.message"
TYPE_RECEIPT_NOTICE = "messenger.receipt-notice"

CONTENT_TYPE = "application/json"


def inbox_queue(username: str) -> str:
    """The durable queue that holds what is waiting for `username`."""
    return f"{INBOX_PREFIX}{username}"


def outbox_queue(shard: int) -> str:
    return f"relay.outbox.{shard}"


OUTBOX_QUEUES = tuple(outbox_queue(i) for i in range(OUTBOX_SHARDS))
