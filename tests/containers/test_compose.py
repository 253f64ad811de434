"""compose.yaml, for real: `docker compose up --build --wait`, then people use it with the
`messenger` command from this machine, the broker is restarted and killed, and
`docker compose down -v` leaves nothing behind. The `cluster` profile: three brokers, one
of them killed, nothing lost.

Slow (a compose project from scratch, minutes each); `make test` runs them after the
private-node suite when a Docker engine answers (tests/containers/run.sh).
"""

from __future__ import annotations

import json
import secrets
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.compose import Deployment
from tests.integration.cli_driver import COMMAND, Person, Result
from tests.integration.stack import eventually, unique_username

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BROKER_API_PORT = 8081


def person(deployment: Deployment, tmp_path: Path, prefix: str, name: str) -> Person:
    username = unique_username(prefix)
    return Person(tmp_path / username, deployment.url, username, secrets.token_urlsafe(12), name)


def run(someone: Person, *args: str, stdin: str | None = None) -> Result:
    """`messenger ARGS` as its own process: the real command, as a shell runs it."""
    return someone.spawn(*args, stdin=stdin)


def signup(someone: Person) -> None:
    done = run(
        someone,
        "signup",
        someone.username,
        "--display-name",
        someone.display_name,
        "--password-stdin",
        stdin=someone.password + "\n",
    )
    assert done.code == 0, done.err


def send(sender: Person, recipient: Person, text: str) -> None:
    done = run(sender, "send", recipient.username, text)
    assert done.code == 0, f"send failed ({done.code}): {done.err}"


class Inbox:
    """What one person has received so far, by id (a redelivery counts once)."""

    def __init__(self, owner: Person) -> None:
        self.owner = owner
        self.by_id: dict[str, dict[str, object]] = {}
        self.deliveries = 0

    def fetch(self) -> set[str]:
        done = run(self.owner, "inbox", "--json")
        assert done.code == 0, f"inbox failed ({done.code}): {done.err}"
        for row in done.json_lines():
            self.deliveries += 1
            self.by_id[str(row["id"])] = row
        return self.texts

    @property
    def texts(self) -> set[str]:
        return {str(row["text"]) for row in self.by_id.values()}

    def wait_for(self, *texts: str, timeout: float = 60) -> None:
        eventually(lambda: set(texts) <= self.fetch(), timeout=timeout, interval=0.5)


@pytest.fixture
def deployments() -> Iterator[list[Deployment]]:
    """Whatever a test brings up is taken down with its volumes, and shown when it failed."""
    started: list[Deployment] = []
    yield started
    for deployment in started:
        deployment.down()


def take_down(deployments: list[Deployment], deployment: Deployment) -> None:
    """`docker compose down -v`, which must leave no container, volume or network."""
    deployments.remove(deployment)
    deployment.down()
    assert deployment.leftovers() == {"containers": [], "volumes": [], "networks": []}


def listen(someone: Person) -> subprocess.Popen[str]:
    """`messenger listen --json` running in the background."""
    return subprocess.Popen(
        [*COMMAND, "listen", "--json"],
        env=someone.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def first_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"nothing printed within {timeout:.0f} s"
    return process.stdout.readline()


def test_single_node_compose_up_exchange_restart_kill_and_down(
    deployments: list[Deployment], tmp_path: Path, timings: dict[str, float]
) -> None:
    deployment = Deployment()
    deployments.append(deployment)
    try:
        timings["compose up --build --wait, one node"] = deployment.up(build=True)

        # Only the public API and AMQP are published; the auth service's broker API answers
        # on the broker-auth network only: a relay (default network) cannot reach it.
        assert deployment.published() == {
            ("auth", deployment.public_port),
            ("broker", deployment.amqp_ports[0]),
        }
        probe = (
            "import socket,sys\n"
            "for host in sys.argv[1:]:\n"
            "    try:\n"
            f"        socket.create_connection((host, {BROKER_API_PORT}), timeout=3).close()\n"
            "        print(host, 'open')\n"
            "    except OSError as exc:\n"
            "        print(host, 'closed', type(exc).__name__)\n"
        )
        seen = deployment.exec("relay", "python", "-c", probe, "auth", "auth-broker-api")
        assert "auth closed" in seen and "auth-broker-api closed" in seen, seen

        alice = person(deployment, tmp_path, "alice", "Alice")
        bob = person(deployment, tmp_path, "bob", "Bob")
        signup(alice)
        signup(bob)
        alice_inbox, bob_inbox = Inbox(alice), Inbox(bob)

        # Bob listens; Alice's message reaches his listener.
        with listen(bob) as listener:
            try:
                send(alice, bob, "hi Bob, are you there?")
                line = first_line(listener, timeout=30)
                assert '"hi Bob, are you there?"' in line, line
            finally:
                listener.terminate()
        send(bob, alice, "yes, hi Alice")
        alice_inbox.wait_for("yes, hi Alice")

        # Offline: Bob is gone; Alice writes; Bob comes back and reads it.
        send(alice, bob, "while you were away")
        bob_inbox.wait_for("while you were away")

        # A message waiting in Bob's inbox survives a broker restart.
        send(alice, bob, "before the restart")
        deployment.compose("restart", "broker", timeout=180)
        timings["broker restart to healthy"] = deployment.up()
        bob_inbox.wait_for("before the restart")

        # The relays are down: the broker has confirmed Alice's message, the relay has not
        # answered ("queued", exit 1). The broker is then SIGKILLed; it comes back, so do
        # the relays, and the message arrives.
        deployment.compose("stop", "relay", timeout=120)
        queued = run(alice, "send", bob.username, "queued while the relays are down")
        assert queued.code == 1 and "queued" in queued.err, queued.err
        deployment.compose("kill", "broker")
        deployment.up()
        bob_inbox.wait_for("queued while the relays are down")
        send(alice, bob, "after the kill")
        bob_inbox.wait_for("after the kill")
        assert len(bob_inbox.by_id) == 4
    except BaseException:
        print(deployment.logs())  # noqa: T201 - shown by pytest for a failed test only
        raise
    take_down(deployments, deployment)


def test_cluster_profile_loses_nothing_when_a_broker_is_killed(
    deployments: list[Deployment], tmp_path: Path, timings: dict[str, float]
) -> None:
    deployment = Deployment(settings={"COMPOSE_PROFILES": "cluster"})
    ports = deployment.amqp_ports
    deployment.settings.update(
        MESSENGER_QUEUE_TYPE="quorum",
        MESSENGER_INBOX_QUEUE_TYPE="quorum",
        MESSENGER_BROKER_NODES="broker:5672,broker-2:5672,broker-3:5672",
        MESSENGER_PUBLIC_AMQP_URLS=",".join(f"amqp://127.0.0.1:{port}" for port in ports),
        MESSENGER_ERLANG_COOKIE=secrets.token_hex(20),
    )
    deployments.append(deployment)
    try:
        timings["compose up --build --wait, cluster profile"] = deployment.up(build=True)
        deployment.compose("wait", "broker-cluster-init", timeout=120)  # exit 0: grown
        status = deployment.exec("broker", "rabbitmqctl", "cluster_status", "--formatter", "json")
        running = json.loads(status[status.index("{") :])["running_nodes"]
        assert sorted(running) == ["rabbit@broker", "rabbit@broker-2", "rabbit@broker-3"]

        alice = person(deployment, tmp_path, "alice", "Alice")
        bob = person(deployment, tmp_path, "bob", "Bob")
        signup(alice)
        signup(bob)
        bob_inbox = Inbox(bob)

        before = [f"before the kill {i}" for i in range(5)]
        for text in before:
            send(alice, bob, text)
        # The node every service and client tries first dies; its quorum replicas elsewhere
        # carry on.
        deployment.compose("kill", "broker")
        # Right after the kill the relays are still moving to another node: a sender may
        # hear "queued" (exit 1, the broker holds it) rather than "accepted"; either way
        # the message must arrive.
        after = [f"after the kill {i}" for i in range(5)]
        for text in after:
            done = run(alice, "send", bob.username, text)
            assert done.code == 0 or (done.code == 1 and "queued" in done.err), done.err
        bob_inbox.wait_for(*before, *after, timeout=120)
        assert len(bob_inbox.by_id) == len(before) + len(after)
    except BaseException:
        print(deployment.logs())  # noqa: T201 - shown by pytest for a failed test only
        raise
    take_down(deployments, deployment)
