"""#9 item 5: a signed-up user with plain pika learns nothing about another user's presence
or traffic from the broker. Device queues have unguessable names; the anchor `user.<name>`
holds nothing and nobody consumes it, so a passive declare of it reads the same for a busy
user and an idle one."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from protocol.topology import device_queue, new_device_id, user_anchor_queue
from tests.integration.conversation_helpers import Device
from tests.integration.messaging_helpers import connect
from tests.integration.stack import close_quietly, eventually, log_in_device, signup_and_login

pytestmark = pytest.mark.usefixtures("relay")


def passive(broker, user, queue: str) -> tuple[int, int] | int:
    """(messages, consumers) of a passive declare as `user`, or the code it was refused with."""
    connection = broker.connect(user.username, user.token)
    try:
        frame = connection.channel().queue_declare(queue, passive=True)
        return int(frame.method.message_count), int(frame.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        close_quietly(connection)


def test_a_passive_declare_of_another_users_queues_learns_nothing(broker, auth):
    busy, idle, eve = (signup_and_login(auth, n) for n in ("busy", "idle", "eve"))
    online = log_in_device(auth, busy)
    with connect(auth, eve) as connection:
        answers = connection.send_many([(busy.username, f"m{i}") for i in range(3)], timeout=60)
    assert all(a.status == "accepted" for a in answers)
    with Device(broker, online) as device:  # busy: a consumer online, messages waiting
        device.wait_messages(3)
        pending = passive(broker, busy, busy.device_queue)  # the owner sees their own
        assert pending == (3, 0)

        anchors = {passive(broker, eve, user_anchor_queue(u.username)) for u in (busy, idle)}
        assert len(anchors) == 1  # busy and idle read the same
        [anchor] = anchors
        assert anchor in ((0, 0), 403)

        # a device queue's name is unguessable: any guess reads as no queue at all
        for _ in range(20):
            guess = device_queue(busy.username, new_device_id())
            assert passive(broker, eve, guess) == 404
        # and knowing a real one gives neither its counts' use nor its messages
        connection = broker.connect(eve.username, eve.token)
        try:
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                channel.basic_consume(busy.device_queue, lambda *a: None)
            assert refused.value.reply_code == 403
        finally:
            close_quietly(connection)
        # nor may she read anybody's anchor
        connection = broker.connect(eve.username, eve.token)
        try:
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                channel.basic_get(user_anchor_queue(busy.username))
            assert refused.value.reply_code == 403
        finally:
            close_quietly(connection)
    eventually(lambda: passive(broker, busy, busy.device_queue) == (3, 0), timeout=15)
