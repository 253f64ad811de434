"""Server-side conversations (#13) against a real broker: devices, carbons, the archive,
read receipts, account deletion, and bad input. Devices here are plain pika consumers on the
device queues, so these tests hold the server to the contract whatever the client does."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import httpx
import pytest

from deploy.local_broker import free_port
from protocol.topology import inbox_queue, user_anchor_queue
from tests.integration.conversation_helpers import (
    Device,
    api,
    publish_receipt,
    queue_exists,
    whole_conversation,
)
from tests.integration.messaging_helpers import connect
from tests.integration.stack import (
    deliver_as_relay,
    eventually,
    log_in_device,
    signup_and_login,
    start_auth,
)

pytestmark = pytest.mark.usefixtures("relay", "archive")


def send_all(auth, sender, to: str, texts: list[str]) -> list[str]:
    """Send through the client library; the server ids, all accepted."""
    with connect(auth, sender) as connection:
        answers = connection.send_many([(to, t) for t in texts], window=200, timeout=120)
    assert [a.status for a in answers] == ["accepted"] * len(texts), answers[:3]
    return [str(a.id) for a in answers]


def test_every_device_gets_every_message_once_in_order_and_a_new_one_pages_all(broker, auth):
    bob = signup_and_login(auth, "bob")
    bob_2 = log_in_device(auth, bob)
    senders = [signup_and_login(auth, f"s{i}") for i in range(3)]
    s0_other = log_in_device(auth, senders[0])  # sees carbons of what s0 sends
    counts = [334, 333, 333]
    with (
        Device(broker, bob) as one,
        Device(broker, bob_2) as two,
        Device(broker, s0_other) as carbon,
    ):
        errors: list[BaseException] = []

        def run(sender, count):
            try:
                send_all(
                    auth, sender, bob.username, [f"{sender.username} {i}" for i in range(count)]
                )
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=run, args=(s, n)) for s, n in zip(senders, counts, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        assert not errors, errors
        for device in (one, two):
            got = device.wait_messages(1000)
            time.sleep(0.5)  # anything more would be a duplicate
            assert len(device.messages) == 1000
            assert len({m["id"] for m in device.messages}) == 1000
            by_sender: dict[str, list[int]] = defaultdict(list)
            for m in got:
                assert m["to"] == bob.username
                by_sender[m["from"]].append(int(m["text"].split()[1]))
            for sender, count in zip(senders, counts, strict=True):
                assert by_sender[sender.username] == list(range(count))  # per-sender order
        carbons = carbon.wait_messages(334)
        assert [(m["from"], m["to"]) for m in carbons] == [
            (senders[0].username, bob.username)
        ] * 334
        assert [m["text"] for m in carbons] == [f"{senders[0].username} {i}" for i in range(334)]

    bob_3 = log_in_device(auth, bob)  # a new device, after everything was delivered

    def archived() -> bool:
        listed = api(auth, "GET", "/v1/conversations", bob_3).json()
        return sum(1 for c in listed if c["last_message"]) == 3

    eventually(archived, timeout=60)
    for sender, count in zip(senders, counts, strict=True):

        def complete(sender=sender, count=count) -> list[dict[str, Any]]:
            history = whole_conversation(auth, bob_3, sender.username)
            return history if len(history) == count else []

        history = eventually(complete, timeout=60)
        assert [m["text"] for m in history] == [f"{sender.username} {i}" for i in range(count)]
    listed = api(auth, "GET", "/v1/conversations", bob_3).json()
    assert {c["peer"] for c in listed} == {s.username for s in senders}
    unread = {c["peer"]: c["unread"] for c in listed}
    assert unread == {s.username: n for s, n in zip(senders, counts, strict=True)}
    assert {c["display_name"] for c in listed} == {s.display_name for s in senders}


def test_a_killed_archive_ends_with_every_accepted_message_once(broker, auth, archive):
    alice, bob = signup_and_login(auth, "alice"), signup_and_login(auth, "bob")
    texts = [f"m{i}" for i in range(600)]
    ids: list[str] = []
    sender = threading.Thread(target=lambda: ids.extend(send_all(auth, alice, bob.username, texts)))
    sender.start()
    time.sleep(0.5)
    archive.kill()  # SIGKILL, mid-stream: a batch may be committed and not acked
    time.sleep(1)
    archive.start()
    archive.wait_ready()
    sender.join(180)
    assert len(ids) == 600

    def complete() -> list[dict[str, Any]]:
        history = whole_conversation(auth, bob, alice.username)
        return history if len(history) >= 600 else []

    history = eventually(complete, timeout=90)
    assert [m["id"] for m in history] == ids  # each once, in order
    assert [m["text"] for m in history] == texts


def test_a_device_whose_queue_is_gone_catches_up_by_sync(broker, auth):
    alice, bob = signup_and_login(auth, "alice"), signup_and_login(auth, "bob")
    first = send_all(auth, alice, bob.username, ["one", "two"])
    # The queue expired (x-expires) or was lost: gone, with what it held.
    connection = broker.connect("auth", broker.service_passwords["auth"])
    connection.channel().queue_delete(bob.device_queue)
    connection.close()
    missed = send_all(auth, alice, bob.username, ["three", "four"])
    assert not queue_exists(broker, bob.device_queue)
    again = api(auth, "PUT", "/v1/sessions/current/queue", bob)
    assert again.status_code == 200 and again.json() == {"device_queue": bob.device_queue}
    later = send_all(auth, alice, bob.username, ["five"])
    with Device(broker, bob) as device:
        assert [m["text"] for m in device.wait_messages(1)] == ["five"]

    def synced() -> list[str]:
        answer = api(auth, "GET", "/v1/sync", bob, params={"after": first[0]})
        if answer.status_code == 422:  # the cursor's message is not archived yet
            return []
        assert answer.status_code == 200, answer.text
        page = answer.json()
        return [m["id"] for m in page["messages"]] if len(page["messages"]) == 4 else []

    assert eventually(synced, timeout=30) == [first[1], *missed, *later]


def test_a_device_offline_past_its_queues_lifetime_catches_up_completely(broker, auth, tmp_path):
    """A second auth service on the same store declares device queues that expire after 3 s
    unused (the broker deletes them, messages and all); the archive still has everything."""
    short = start_auth(
        broker,
        tmp_path,
        MESSENGER_AUTH_DB_PATH=str(auth.db_path),
        MESSENGER_AUTH_BROKER_API_PORT=str(free_port()),  # the broker asks the session's
        MESSENGER_AUTH_DEVICE_QUEUE_IDLE_DAYS=str(3 / 86400),
    )
    try:
        alice, bob = signup_and_login(auth, "alice"), signup_and_login(short, "bob")
        first = send_all(auth, alice, bob.username, ["one", "two"])
        # (listed by rabbitmqctl: a passive declare would count as use and keep it alive)
        eventually(lambda: bob.device_queue not in broker.queue_depths(), timeout=60, interval=1)
        later = send_all(auth, alice, bob.username, ["three"])
    finally:
        short.stop()

    def synced() -> list[str]:
        answer = api(auth, "GET", "/v1/sync", bob)
        assert answer.status_code == 200, answer.text
        texts = [m["text"] for m in answer.json()["messages"]]
        return texts if len(texts) == 3 else []

    assert eventually(synced, timeout=30) == ["one", "two", "three"]
    page = api(auth, "GET", "/v1/sync", bob, params={"after": first[1]}).json()
    assert [m["id"] for m in page["messages"]] == later
    again = api(auth, "PUT", "/v1/sessions/current/queue", bob)
    assert again.status_code == 200 and queue_exists(broker, bob.device_queue)


def test_read_receipts_reach_the_sender_and_the_readers_devices_unless_turned_off(broker, auth):
    alice, bob = signup_and_login(auth, "alice"), signup_and_login(auth, "bob")
    bob_2 = log_in_device(auth, bob)
    with Device(broker, alice) as sender, Device(broker, bob_2) as other:
        first, second = send_all(auth, alice, bob.username, ["read me", "and me"])
        publish_receipt(broker, bob, first, alice.username, "read")
        eventually(lambda: sender.receipts and other.receipts, timeout=30)
        assert [(r["message_id"], r["reader"], r["status"]) for r in sender.receipts] == [
            (first, bob.username, "read")
        ]
        assert [(r["message_id"], r["status"]) for r in other.receipts] == [(first, "read")]

        assert api(auth, "PATCH", "/v1/me/settings", bob, json={"read_receipts": False}).json() == {
            "read_receipts": False
        }
        assert api(auth, "GET", "/v1/me/settings", bob).json() == {"read_receipts": False}
        publish_receipt(broker, bob, second, alice.username, "read", notify=False)
        eventually(lambda: len(other.receipts) == 2, timeout=30)
        # Then a message from bob: his receipt would have come before it (one outbox shard).
        send_all(auth, bob, alice.username, ["marker"])
        sender.wait_messages(1)
        assert len(sender.receipts) == 1  # nothing about `second`

    def statuses() -> list[str]:
        page = api(auth, "GET", f"/v1/conversations/{bob.username}/messages", alice).json()
        return [m["status"] for m in page["messages"]]

    # alice sees `second` delivered, never read; bob's devices know he read both
    assert eventually(lambda: statuses() == ["read", "delivered", "accepted"] or None, 30)
    page = api(auth, "GET", f"/v1/conversations/{alice.username}/messages", bob).json()
    assert [m["status"] for m in page["messages"]][:2] == ["read", "read"]


def test_account_deletion_removes_what_it_says_and_nothing_else(broker, auth):
    carol, dave = signup_and_login(auth, "carol"), signup_and_login(auth, "dave")
    carol_2 = log_in_device(auth, carol)
    send_all(auth, carol, dave.username, ["from carol"])
    send_all(auth, carol, carol.username, ["note to self"])
    send_all(auth, dave, carol.username, ["from dave"])
    eventually(lambda: len(whole_conversation(auth, dave, carol.username)) == 2, timeout=30)

    wrong = api(auth, "DELETE", "/v1/me", carol, json={"password": "not her password"})
    assert wrong.status_code == 403 and wrong.json() == {"detail": "wrong password"}
    assert api(auth, "GET", "/v1/sessions/current", carol).status_code == 200
    assert queue_exists(broker, carol.device_queue)

    gone = api(auth, "DELETE", "/v1/me", carol_2, json={"password": carol.password})
    assert gone.status_code == 204, gone.text
    for queue in (carol.device_queue, carol_2.device_queue, user_anchor_queue(carol.username)):
        assert not queue_exists(broker, queue), queue
    for token_user in (carol, carol_2):
        assert api(auth, "GET", "/v1/sessions/current", token_user).status_code == 401
        assert api(auth, "GET", "/v1/conversations", token_user).status_code == 401
    assert api(auth, "GET", f"/v1/users/{carol.username}").status_code == 410
    assert api(auth, "GET", f"/v1/users/{carol.username}").json() == {"detail": "deleted"}
    body = {"username": carol.username, "display_name": "C", "password": "x" * 12}
    again = api(auth, "POST", "/v1/users", json=body)
    assert again.status_code == 409 and "deleted" in again.json()["detail"]
    # dave keeps the conversation; carol is a deleted user in his list
    assert [m["text"] for m in whole_conversation(auth, dave, carol.username)] == [
        "from carol",
        "from dave",
    ]
    [summary] = api(auth, "GET", "/v1/conversations", dave).json()
    assert (summary["peer"], summary["display_name"]) == (carol.username, None)
    assert queue_exists(broker, dave.device_queue)
    assert api(auth, "GET", "/v1/sessions/current", dave).status_code == 200
    # a message to carol is refused as to nobody
    with connect(auth, dave) as connection:
        [answer] = connection.send_many([(carol.username, "hello?")], timeout=30)
    assert (answer.status, answer.reason) == ("rejected", "unknown_recipient")


def test_bad_history_requests_get_a_clear_4xx_and_change_nothing(broker, auth):
    alice, bob, eve = (signup_and_login(auth, n) for n in ("alice", "bob", "eve"))
    [mine] = send_all(auth, alice, bob.username, ["ours"])
    [theirs] = send_all(auth, eve, alice.username, ["eve's"])
    eventually(lambda: whole_conversation(auth, bob, alice.username), timeout=30)
    eventually(lambda: whole_conversation(auth, eve, alice.username), timeout=30)
    path = f"/v1/conversations/{alice.username}/messages"
    for params in ({"limit": "0"}, {"limit": "201"}, {"limit": "ten"}, {"before": "x' OR 1=1"},
                   {"before": str(uuid.uuid4())}, {"after": theirs}):  # fmt: skip
        answer = api(auth, "GET", path, bob, params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert isinstance(answer.json()["detail"], str) and answer.json()["detail"]
    for params in ({"limit": "0"}, {"after": theirs}):  # eve's message is not bob's
        assert api(auth, "GET", "/v1/sync", bob, params=params).status_code == 422
    # another pair's conversation: eve asking about alice-bob sees only her own with alice
    own = whole_conversation(auth, eve, alice.username)
    assert [m["id"] for m in own] == [theirs]
    assert api(auth, "GET", "/v1/conversations/nobody-here/messages", bob).status_code == 404
    assert api(auth, "GET", "/v1/conversations/NOT_A_NAME/messages", bob).status_code == 404
    assert api(auth, "GET", "/v1/conversations").status_code == 401
    forged = httpx.get(f"{auth.url}/v1/sync", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert forged.status_code == 401
    assert [m["id"] for m in whole_conversation(auth, bob, alice.username)] == [mine]


def test_the_archive_api_answers_only_with_the_shared_key(archive):
    url = f"{archive.place.url}/v1/conversations"
    for headers in ({}, {"X-Messenger-User": "alice"},
                    {"X-Messenger-User": "alice", "X-Messenger-Archive-Key": "guess"}):  # fmt: skip
        assert httpx.get(url, headers=headers, timeout=10).status_code == 401
    assert archive.get("/v1/conversations", "alice").status_code == 200


def test_migrate_gives_anchors_and_retires_legacy_inboxes_keeping_undrained_ones(
    broker, auth, tmp_path
):
    """On a user store of its own (the session's users keep their inboxes)."""
    store = {"MESSENGER_AUTH_DB_PATH": str(tmp_path / "old.sqlite3")}
    names = [f"m{uuid.uuid4().hex[:10]}" for _ in range(2)]
    users = [{"username": n, "display_name": n, "password": "x" * 12} for n in names]
    imported = auth.cli_with(store, "import", "-", stdin=json.dumps({"users": users}))
    assert imported.returncode == 0, imported.stderr
    drained, waiting = names
    deliver_as_relay(broker.node, waiting, b'{"unread": true}')
    depths = broker.queue_depths()
    assert depths[inbox_queue(drained)] == 0 and depths[inbox_queue(waiting)] == 1

    off = {**store, "MESSENGER_AUTH_LEGACY_INBOXES": "false"}
    for _ in range(2):  # idempotent
        migrated = auth.cli_with(off, "migrate")
        assert migrated.returncode == 0, migrated.stderr
    assert "2 anchors" in migrated.stdout
    depths = broker.queue_depths()
    assert inbox_queue(drained) not in depths  # empty: deleted
    assert depths[inbox_queue(waiting)] == 1  # kept for its owner's client to drain
    assert {user_anchor_queue(n) for n in names} <= set(depths)
    # unbound: a message now reaches the anchor (routable), not the old inbox
    deliver_as_relay(broker.node, waiting, b'{"later": true}')
    assert broker.queue_depths()[inbox_queue(waiting)] == 1
