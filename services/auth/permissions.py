"""What a person may do on the broker: the decisions behind /broker/vhost, /resource, /topic.

The model, exactly: a user may read only their own device queues `device.<own username>.*`
and the legacy `inbox.<own username>`, write only the exchange `outbox`, configure nothing;
every other request is denied (never `user.*`: anchors hold nothing, and nobody needs them).
Service accounts (`relay`, `auth`, `archive`) live in the broker's internal store and never
reach these functions; their names are reserved, so the HTTP backend denies them too.

Note RabbitMQ's own mapping of operations to permissions: `queue.purge` needs `read`, so a
user may purge their own inbox (it is the same as reading it all), never anybody else's.
"""

from protocol.accounts import is_valid_username
from protocol.topology import DEVICE_PREFIX, OUTBOX_EXCHANGE, inbox_queue, is_device_id


def may_log_in_as(username: str) -> bool:
    """Only well-formed, unreserved names are people; anything else is denied at once."""
    return is_valid_username(username)


def vhost_allowed(username: str, vhost: str, allowed_vhost: str) -> bool:
    return may_log_in_as(username) and vhost == allowed_vhost


def resource_allowed(
    username: str,
    vhost: str,
    resource: str,
    name: str,
    permission: str,
    allowed_vhost: str,
) -> bool:
    if not vhost_allowed(username, vhost, allowed_vhost):
        return False
    if resource == "queue" and permission == "read":
        return name == inbox_queue(username) or _own_device_queue(username, name)
    if resource == "exchange" and permission == "write":
        return name == OUTBOX_EXCHANGE
    return False


def topic_allowed() -> bool:
    """No topic exchange is meant for people."""
    return False


def _own_device_queue(username: str, name: str) -> bool:
    prefix = f"{DEVICE_PREFIX}{username}."
    return name.startswith(prefix) and is_device_id(name[len(prefix) :])
