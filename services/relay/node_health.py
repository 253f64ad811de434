"""Which nodes the relay knows and which are down: an answer goes only to a direct reply-to
address that names a node the relay knows to be up.

RabbitMQ closes the relay's whole connection (541) when it publishes to a direct reply-to
address that names a node it cannot find, and any signed-up user can write such an address
into `reply_to` (issue 9: 200 forged addresses, 21 reconnects in 10 s). So the relay
answers an address only when it can prove it deliverable: it decodes the node from the
address (broker/reply_to.py) and answers only if that node is one whose name it learned
from the broker itself and that is not down (`Answerability`). Until the name of the node
the relay is connected to is known (a round trip after the answer channel opens), answers
wait (answers.py).

The other half is the same guard for honest addresses:

RabbitMQ 3.10 crashes the channel that publishes to the direct reply-to address of a node
that has left the cluster (rabbit_channel:deliver_reply gets a bare `error` from
rabbit_direct_reply_to:decode_reply_to_v2 and has no clause for it), and a channel crash
closes the whole connection with 541 INTERNAL_ERROR: every unacked outbox message is
redelivered, and every answer in flight is lost. After a node dies, the outbox still holds
messages its clients sent, so each relay connection would be torn down again and again
until they were all gone. Those senders are gone too (they publish everything unanswered
again from their new node), so their answers are dropped instead: the node named in the
address is checked against the nodes that are down.

A node's name is learned from the broker (`learn_name` on each answer channel, and once
per node from a thread); a node counts as down when the relay's connection to it is lost or
refused, or when it refuses a TCP connect tried right after the relay's connection was lost
or closed with 541; it is up again when a TCP connect (tried every second) or the relay's
own connection reaches it. Two threads, one lock; the I/O loop reads `_down_names` unlocked
(it is replaced, never changed in place).
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
from collections.abc import Callable

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec

from broker.errors import connection_lost, describe, reply_code
from broker.params import Node
from broker.reply_to import reply_to_node
from protocol.topology import REPLY_TO
from services.relay.settings import RelaySettings

logger = logging.getLogger(__name__)

# A routing key no queue has: the broker returns the mandatory publish that learns a node's
# reply-to name, with the `reply_to` it wrote.
_NOWHERE = "messenger.relay.no-such-queue"
# How often the nodes that are down are checked (a TCP connect) for their return.
NODE_CHECK_INTERVAL_SECONDS = 1.0
# How long to wait before asking an unreachable node its reply-to name again.
NAME_RETRY_SECONDS = 5.0


class Answerability(enum.Enum):
    """May the relay publish to a direct reply-to address?"""

    YES = "yes"  # a node the relay learned from the broker, and up
    NODE_DOWN = "node down"  # an honest sender whose node went: its answer is dropped
    UNPROVEN = "unproven"  # not a node the relay knows (forged, or malformed): not answered
    NOT_YET = "not yet"  # the relay has not learned its own node's name yet: wait


class NodeHealth:
    def __init__(self, settings: RelaySettings, stop: threading.Event) -> None:
        self._settings = settings
        self._nodes = settings.broker_nodes()
        self._stop = stop  # set: the threads end
        self._names: dict[Node, str] = {}  # node -> the name its reply-to addresses carry
        self._current: Node | None = None  # the node the relay's connection is on
        self._down_names: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._checker: threading.Thread | None = None
        self._check_all = False  # the last connection was lost, or closed with 541

    def start(self) -> None:
        """Learn every node's name in the background (only a cluster needs them)."""
        if len(self._nodes) > 1:
            threading.Thread(target=self._fetch_names, name="relay-node-names", daemon=True).start()

    def blocks(self, reply_to: str) -> bool:
        """The address belongs to a node that is down: do not answer it."""
        return reply_to_node(reply_to) in self._down_names

    def answerability(self, reply_to: str) -> Answerability:
        """Whether an answer to `reply_to` can be delivered without risking the connection."""
        node = reply_to_node(reply_to)
        if node is None:
            return Answerability.UNPROVEN
        if node in self._down_names:
            return Answerability.NODE_DOWN
        known = self._names  # replaced whole by named(), never changed in place
        if node in known.values():
            return Answerability.YES
        if self._current is not None and self._current not in known:
            return Answerability.NOT_YET
        return Answerability.UNPROVEN

    def connected_to(self, node: Node) -> None:
        """The relay's connection is to `node` now: answers wait until its name is known."""
        self._current = node

    def named(self, node: Node, name: str | None) -> None:
        """`node` writes `name` into its direct reply-to addresses."""
        if name is not None and self._names.get(node) != name:
            logger.debug("the node at %s:%d answers as %s", *node, name)
            self._names = {**self._names, node: name}  # replaced whole: two threads read it

    def learn_name(
        self,
        channel: pika.channel.Channel,
        node: Node,
        on_learned: Callable[[], None] = lambda: None,
    ) -> None:
        """Learn `node`'s name on `channel`: a mandatory publish that no queue takes, with
        `reply_to` set, comes back with the address rewritten; then `on_learned()`."""

        def on_return(
            _channel: pika.channel.Channel,
            _method: pika.spec.Basic.Return,
            props: pika.spec.BasicProperties,
            _body: bytes,
        ) -> None:
            address = props.reply_to if isinstance(props.reply_to, str) else None
            self.named(node, reply_to_node(address))
            on_learned()

        def on_consume_ok(_frame: pika.frame.Method) -> None:
            if channel.is_open:
                channel.basic_publish(
                    "", _NOWHERE, b"", pika.BasicProperties(reply_to=REPLY_TO), mandatory=True
                )

        channel.add_on_return_callback(on_return)
        channel.basic_consume(REPLY_TO, lambda *_: None, auto_ack=True, callback=on_consume_ok)

    def down(self, node: Node) -> None:
        name = self._names.get(node)
        if name is None or name in self._down_names:
            return
        logger.warning(
            "the node at %s:%d (%s) is down: answers to its clients are dropped until it is "
            "back", *node, name,
        )  # fmt: skip
        with self._lock:
            self._down_names = self._down_names | {name}
        if self._checker is None or not self._checker.is_alive():
            self._checker = threading.Thread(
                target=self._watch_down_nodes, name="relay-node-check", daemon=True
            )
            self._checker.start()

    def up(self, node: Node) -> None:
        name = self._names.get(node)
        if name is not None and name in self._down_names:
            logger.info("the node at %s:%d (%s) is back", *node, name)
            with self._lock:
                self._down_names = self._down_names - {name}

    def connection_closed(self, node: Node, reason: BaseException) -> None:
        """The relay's connection to `node` closed. A lost one means the node went (a TCP
        connect may still succeed for a few ms while a killed node's sockets close); a 541
        may be an answer for a node that went: check every node before connecting again."""
        lost = connection_lost(reason)
        if lost:
            self.down(node)
        self._check_all = lost or reply_code(reason) == pika.spec.INTERNAL_ERROR

    def before_reconnect(self) -> None:
        """Mark every node that refuses a TCP connect (or does not take it within a
        second) as down, if the last connection ended in a way that calls for it."""
        if not self._check_all:
            return
        self._check_all = False
        for node, name in list(self._names.items()):
            if name not in self._down_names and not _reachable(node):
                self.down(node)

    def _watch_down_nodes(self) -> None:
        """Thread: until no node is down, try a TCP connect to each down node every second."""
        while self._down_names and not self._stop.wait(NODE_CHECK_INTERVAL_SECONDS):
            for node, name in list(self._names.items()):
                if name in self._down_names and _reachable(node):
                    self.up(node)

    def _fetch_names(self) -> None:
        """Thread: learn the name of every node, each on a short connection of its own, so
        that a node the relay never used can be recognised when it dies."""
        while not self._stop.is_set():
            for node in [n for n in self._nodes if n not in self._names]:
                try:
                    self.named(node, self._ask_name(node))
                except (pika.exceptions.AMQPError, OSError) as exc:
                    logger.debug("could not learn the name of %s:%d: %s", *node, describe(exc))
            if all(n in self._names for n in self._nodes):
                return
            self._stop.wait(NAME_RETRY_SECONDS)

    def _ask_name(self, node: Node) -> str | None:
        params = self._settings.connection_parameters(
            node,
            name=f"messenger-relay pid {os.getpid()} (probe)",
            blocked_connection_timeout=5,
        )
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_consume(REPLY_TO, lambda *_: None, auto_ack=True)
            try:
                channel.basic_publish(
                    "", _NOWHERE, b"", pika.BasicProperties(reply_to=REPLY_TO), mandatory=True
                )
            except pika.exceptions.UnroutableError as returned:
                for message in returned.messages:
                    return reply_to_node(message.properties.reply_to)
            return None
        finally:
            if connection.is_open:
                connection.close()


def _reachable(node: Node) -> bool:
    try:
        socket.create_connection(node, timeout=NODE_CHECK_INTERVAL_SECONDS).close()
    except OSError:
        return False
    return True
