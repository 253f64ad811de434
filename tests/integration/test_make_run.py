"""`make run` as an operator uses it: supervised parts, stable addresses, import, two at once.

One instance (`python -m deploy.run`, what `make run` runs) is started for the module on a
private data directory and port. Its relay, auth service, broker node and archive are SIGKILLed one
at a time; each must come back by itself, and a message sent while it was down must arrive
exactly once. The time from the kill until a message flows end to end again is logged
(`-o log_cli=true` shows it). A second instance runs beside the first, and is restarted on
its own data directory to show that its broker keeps its address.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from deploy import run_state
from deploy.instance import stable_ports
from tests.integration.cli_driver import COMMAND, Person
from tests.integration.live_clients import ChatWindow, Listener
from tests.integration.stack import eventually

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

START_TIMEOUT = 120.0
FLOW_TIMEOUT = 60.0


@dataclass
class Instance:
    """One `make run`, its data directory and its output."""

    data_dir: Path
    public_port: int
    process: subprocess.Popen[bytes] | None = None
    output: Path = field(init=False)

    def __post_init__(self) -> None:
        self.output = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
        env.update(
            MESSENGER_RUN_DATA_DIR=str(self.data_dir),
            MESSENGER_RUN_PUBLIC_PORT=str(self.public_port),
            MESSENGER_RUN_DOCKER="false",
        )
        return env

    def start(self, **extra_env: str) -> None:
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "deploy.run"],
                env={**self.env(), **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        eventually(self._up, timeout=START_TIMEOUT, interval=0.2)

    def _up(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log()
        return run_state.read(self.data_dir) is not None

    def state(self) -> run_state.RunningState:
        state = run_state.read(self.data_dir)
        assert state is not None, self.log()
        return state

    def part_pids(self) -> list[int]:
        return [pid for pid in self.state().parts.values() if pid is not None]

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        """Ctrl-C (SIGINT) as a terminal sends it; the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=120)

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


def public_port_for_test() -> int:
    """Below the ephemeral range: the second start of an instance binds it again, and by then
    a port from that range may be some outgoing connection's."""
    return stable_ports(1)[0]


def private_dir(prefix: str) -> Path:
    """Under /tmp, enterable by the `rabbitmq` user the node runs as when we are root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


@contextlib.contextmanager
def running(data_dir: Path, public_port: int | None = None) -> Iterator[Instance]:
    instance = Instance(data_dir, public_port or public_port_for_test())
    instance.start()
    pids = instance.part_pids()
    try:
        yield instance
    finally:
        pids += instance.part_pids() if run_state.read(data_dir) else []
        code = instance.stop()
        assert code == 0, instance.log()[-3000:]
        for pid in pids:  # Ctrl-C leaves nothing behind
            eventually(functools.partial(gone, pid), timeout=30)
        assert not run_state.path_in(data_dir).exists()


def person(instance: Instance, home: Path, prefix: str) -> Person:
    username = f"{prefix}{uuid.uuid4().hex[:8]}"
    return Person(home / username, instance.url, username, secrets.token_urlsafe(12), prefix)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = private_dir("messenger-make-run-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def instance(base: Path) -> Iterator[Instance]:
    data_dir = base / "first"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    with running(data_dir) as started:
        yield started


@pytest.fixture(scope="module")
def pair(instance: Instance, base: Path) -> tuple[Person, Person]:
    alice, bob = person(instance, base, "alice"), person(instance, base, "bob")
    alice.signup()
    bob.signup()
    return alice, bob


class Flow:
    """Sends from alice to bob and reads bob's inbox; counts every text bob was shown."""

    def __init__(self, alice: Person, bob: Person) -> None:
        self.alice, self.bob = alice, bob
        self.seen: dict[str, int] = {}

    def send(self, text: str) -> bool:
        """True once the message is accepted, or held by the broker for the relay (queued)."""
        result = self.alice.run("send", self.bob.username, text)
        return result.code == 0 or "queued" in result.err

    def send_in_background(self, text: str) -> threading.Thread:
        """`messenger send` as its own process, again and again until it is taken (the
        broker refuses connections while it is down); returns at once."""
        return keep_sending(self.alice, self.bob.username, text)

    def read(self) -> None:
        result = self.bob.run("inbox", "--json")
        if result.code != 0:  # the server or the broker is down: it failed at once
            time.sleep(0.2)
            return
        for row in result.json_lines():
            self.seen[row["text"]] = self.seen.get(row["text"], 0) + 1

    def until_delivered(self, text: str, timeout: float = FLOW_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.seen.get(text, 0) == 0:
            assert time.monotonic() < deadline, f"{text!r} never arrived"
            self.read()


@pytest.mark.parametrize("part", ["relay", "auth service", "broker node", "archive"])
def test_a_killed_part_comes_back_by_itself_and_nothing_is_lost(
    instance: Instance, pair: tuple[Person, Person], part: str
):
    flow = Flow(*pair)
    assert flow.send(f"before {part}")
    flow.until_delivered(f"before {part}")
    state = instance.state()
    (name,) = [n for n in state.parts if n.startswith(part)]
    victim = state.parts[name]
    assert victim is not None
    restarts = state.restarts.get(name, 0)

    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    during = f"sent while the {part} was down"
    sender = flow.send_in_background(during)
    flow.until_delivered(during)
    flowing = time.monotonic() - killed_at
    sender.join(FLOW_TIMEOUT)
    logger.warning(
        "SIGKILL of the %s: a message sent meanwhile arrived %.1f s later", part, flowing
    )
    assert flow.send(f"after {part}")
    flow.until_delivered(f"after {part}")

    new_state = instance.state()
    assert new_state.restarts[name] == restarts + 1
    assert new_state.parts[name] not in (None, victim)
    assert f"{name} exited (killed by SIGKILL)" in instance.log()
    flow.read()
    assert [flow.seen[t] for t in (f"before {part}", during, f"after {part}")] == [1, 1, 1]


def keep_sending(sender: Person, to: str, text: str) -> threading.Thread:
    """`messenger send` as its own process, again and again until the server has it (held
    by the broker or accepted); returns at once. Each attempt fails fast while a part is
    down; the one that gets through is the only one that published the message."""
    env = sender.env()
    command = [*COMMAND, "send", to, text]

    def keep_trying() -> None:
        deadline = time.monotonic() + FLOW_TIMEOUT
        while time.monotonic() < deadline:
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode == 0 or "queued" in done.stderr:
                return
            time.sleep(0.2)

    thread = threading.Thread(target=keep_trying, daemon=True)
    thread.start()
    return thread


class Inbox:
    """What one person was shown by `messenger inbox --json`, counted over every call."""

    def __init__(self, owner: Person) -> None:
        self.owner = owner
        self.seen: dict[str, int] = {}

    def wait_for(
        self, text: str, timeout: float = FLOW_TIMEOUT, why: Callable[[], str] = str
    ) -> None:
        """Until `text` was shown; `why()` says more when it never is (a chat's screen)."""
        deadline = time.monotonic() + timeout
        while self.seen.get(text, 0) == 0:
            assert time.monotonic() < deadline, (
                f"{text!r} never reached {self.owner.username}\n{why()}"
            )
            result = self.owner.run("inbox", "--json")
            if result.code != 0:
                time.sleep(0.3)
                continue
            for row in result.json_lines():
                self.seen[row["text"]] = self.seen.get(row["text"], 0) + 1


@dataclass
class OpenClients:
    """sam sends; lena has `listen` open, carl a `chat` with sam, for the whole module."""

    sam: Person
    lena: Person
    carl: Person
    listen: Listener
    chat: ChatWindow
    sams_inbox: Inbox

    def shown_in_chat(self, text: str) -> int:
        """How often the chat printed `text` as a message from sam."""
        return self.chat.screen().count(f"{self.sam.username}): {text}")


@pytest.fixture(scope="module")
def open_clients(instance: Instance, base: Path) -> Iterator[OpenClients]:
    sam, lena, carl = (person(instance, base, name) for name in ("sam", "lena", "carl"))
    for someone in (sam, lena, carl):
        someone.signup()
    listen = Listener(lena, base)
    try:
        chat = ChatWindow(carl, sam.username, base)
        try:
            yield OpenClients(sam, lena, carl, listen, chat, Inbox(sam))
        finally:
            chat.close()
    finally:
        listen.stop()


def no_raw_errors(text: str) -> None:
    """What a person reads has no pika tuple, no traceback, no failover talk on one node."""
    for raw in ("Traceback", "CONNECTION_FORCED", "moving to the next node", "((", "pika"):
        assert raw not in text, f"{raw!r} shown to the user:\n{text[-3000:]}"


@pytest.mark.parametrize("part", ["relay", "auth service", "broker node"])
def test_open_clients_ride_out_a_killed_part(
    instance: Instance, open_clients: OpenClients, part: str
):
    clients = open_clients
    sam, lena, carl = clients.sam, clients.lena, clients.carl
    tag = part.split()[0]
    sam.ok("send", lena.username, f"{tag}: before")
    sam.ok("send", carl.username, f"{tag}: before, in the chat")
    clients.listen.wait_for(f"{tag}: before", FLOW_TIMEOUT)
    clients.chat.wait_for(f"{tag}: before, in the chat", FLOW_TIMEOUT)
    state = instance.state()
    (name,) = [n for n in state.parts if n.startswith(part)]
    victim = state.parts[name]
    assert victim is not None

    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    typed = f"{tag}: typed in the chat during the outage"
    clients.chat.type_line(typed)
    during = f"{tag}: sent during the outage"
    senders = [keep_sending(sam, lena.username, during), keep_sending(sam, carl.username, during)]
    back = eventually(
        lambda: (instance.state().parts.get(name) not in (None, victim)) and time.monotonic(),
        timeout=FLOW_TIMEOUT,
        interval=0.1,
    )
    clients.listen.wait_for(during, FLOW_TIMEOUT)
    listened = time.monotonic()
    clients.chat.wait_for(f"{sam.username}): {during}", FLOW_TIMEOUT)
    chatted = time.monotonic()
    clients.sams_inbox.wait_for(typed, why=lambda: clients.chat.screen()[-4000:])
    logger.warning(
        "SIGKILL of the %s: back after %.1f s; listen showed a message sent meanwhile after "
        "%.1f s, chat after %.1f s",
        part,
        back - killed_at,
        listened - killed_at,
        chatted - killed_at,
    )
    for sender in senders:
        sender.join(FLOW_TIMEOUT)

    # Nothing was done to the clients, and the next message reaches them as usual.
    sam.ok("send", lena.username, f"{tag}: after")
    sam.ok("send", carl.username, f"{tag}: after, in the chat")
    clients.listen.wait_for(f"{tag}: after", FLOW_TIMEOUT)
    clients.chat.wait_for(f"{tag}: after, in the chat", FLOW_TIMEOUT)
    carl.ok("send", sam.username, f"{tag}: carl after")
    clients.sams_inbox.wait_for(f"{tag}: carl after")

    assert [clients.listen.count(f"{tag}: {t}") for t in ("before", "sent during the outage",
                                                           "after")] == [1, 1, 1]  # fmt: skip
    assert clients.shown_in_chat(during) == 1
    assert clients.sams_inbox.seen[typed] == 1
    assert clients.listen.process.poll() is None and clients.chat.child.isalive()
    screen, status = clients.chat.screen(), clients.listen.status()
    no_raw_errors(screen)
    no_raw_errors(status)
    if part == "broker node":  # the clients noticed, said so, and said when it was over
        assert "offline: the server at 127.0.0.1:" in status and "back online" in status
        assert "offline: the server at 127.0.0.1:" in screen and "back online" in screen


def test_the_broker_api_answers_the_broker_only(instance: Instance, pair: tuple[Person, Person]):
    alice, _ = pair
    env = instance.state().auth_env
    base = f"http://127.0.0.1:{env['MESSENGER_AUTH_BROKER_API_PORT']}"
    login = {"username": alice.username, "password": alice.password}
    # A local program that found the port, but not the key in the broker's config:
    for path in ("/broker/user", "/x/broker/user", "/broker/resource"):
        refused = httpx.post(f"{base}{path}", data=login, timeout=10)
        assert refused.status_code == 404 and "allow" not in refused.text
    keyed = httpx.post(
        f"{base}/{env['MESSENGER_AUTH_BROKER_API_KEY']}/broker/user", data=login, timeout=10
    )
    assert keyed.text == "allow"
    log = instance.log()  # both listeners answered before the node was started
    assert log.index("Uvicorn running on") < log.index("starting RabbitMQ node")
    conf = instance.data_dir / "rabbitmq" / "rabbitmq.conf"
    assert conf.stat().st_mode & 0o077 == 0  # only the broker reads the key
    assert run_state.path_in(instance.data_dir).stat().st_mode & 0o077 == 0


def test_import_into_the_running_instance(
    instance: Instance, pair: tuple[Person, Person], base: Path
):
    _, bob = pair
    carol = person(instance, base, "carol")
    users = base / "users.json"
    users.write_text(
        json.dumps(
            {
                "users": [
                    {
                        "username": carol.username,
                        "display_name": "Carol",
                        "password": carol.password,
                    },
                    {"username": "bogus", "display_name": "B", "password_hash": "$argon2id$x"},
                ]
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "deploy.import_users", str(users)],  # what `make import` runs
        env=instance.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # one entry was invalid
    assert f"created  #1 {carol.username}" in result.stdout
    assert "invalid  #2 bogus: password_hash is not an argon2 hash" in result.stdout
    carol.login()
    flow = Flow(carol, bob)
    assert flow.send("hello from an imported account")
    flow.until_delivered("hello from an imported account")
    back = Flow(bob, carol)
    assert back.send("welcome, carol")
    back.until_delivered("welcome, carol")


def test_import_without_a_running_instance_says_so(base: Path):
    lonely = private_dir("messenger-nothing-runs-")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
        result = subprocess.run(
            [sys.executable, "-m", "deploy.import_users", str(base / "users.json")],
            env={**env, "MESSENGER_RUN_DATA_DIR": str(lonely)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        shutil.rmtree(lonely, ignore_errors=True)
    assert result.returncode == 2
    assert "no Messenger runs on" in result.stderr and "Traceback" not in result.stderr


def test_a_second_instance_runs_beside_the_first_and_keeps_its_address(
    instance: Instance, base: Path
):
    data_dir = base / "second"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    first_meta = httpx.get(f"{instance.url}/v1/meta", timeout=10).json()
    port = public_port_for_test()
    with running(data_dir, port) as second:
        meta = httpx.get(f"{second.url}/v1/meta", timeout=10).json()
        assert meta["amqp_url"] != first_meta["amqp_url"]
        dave, erin = person(second, base, "dave"), person(second, base, "erin")
        dave.signup()
        erin.signup()
        assert httpx.get(f"{instance.url}/v1/users/{dave.username}", timeout=10).status_code == 404
        flow = Flow(dave, erin)
        assert flow.send("on the second instance")
        flow.until_delivered("on the second instance")
        identity = json.loads((data_dir / "instance.json").read_text())
    with running(data_dir, port) as again:  # the same directory: the same broker address
        assert httpx.get(f"{again.url}/v1/meta", timeout=10).json() == meta
        assert json.loads((data_dir / "instance.json").read_text()) == identity
        erin.login()
        after = Flow(dave, erin)
        assert after.send("after a restart")
        after.until_delivered("after a restart")
    assert identity["node_name"] not in instance.log()  # its own node name


def test_a_chat_stays_open_while_make_run_is_stopped_and_started_again(
    instance: Instance, open_clients: OpenClients
):
    clients = open_clients
    sam, lena, carl = clients.sam, clients.lena, clients.carl
    assert instance.stop() == 0  # Ctrl-C
    clients.chat.wait_for("offline: the server at", FLOW_TIMEOUT)
    typed = "typed while make run was stopped"
    clients.chat.type_line(typed)
    clients.chat.wait_for(f"queued, will send when back online: {typed}", FLOW_TIMEOUT)
    instance.start()
    started = time.monotonic()
    clients.sams_inbox.wait_for(typed)  # the line kept while offline went out by itself
    clients.chat.type_line("typed after the restart")
    clients.sams_inbox.wait_for("typed after the restart")
    logger.warning(
        "make run started again: the queued chat line arrived after %.1f s",
        time.monotonic() - started,
    )
    sam.ok("send", carl.username, "to the chat after the restart")
    sam.ok("send", lena.username, "to listen after the restart")
    clients.chat.wait_for("to the chat after the restart", FLOW_TIMEOUT)
    clients.listen.wait_for("to listen after the restart", FLOW_TIMEOUT)
    assert clients.sams_inbox.seen[typed] == 1
    assert clients.chat.screen().count(f"{carl.username}): {typed}") == 1
    no_raw_errors(clients.chat.screen())
    no_raw_errors(clients.listen.status())


def test_open_clients_find_the_broker_where_the_server_says_it_moved(
    instance: Instance, open_clients: OpenClients
):
    """make run started again on another AMQP port (as when another program took the old
    one): the clients that stayed open ask `GET /v1/meta` while they wait, and go there."""
    clients = open_clients
    sam, lena, carl = clients.sam, clients.lena, clients.carl
    old_url = instance.state().amqp_urls[0]
    assert instance.stop() == 0
    (new_port,) = stable_ports(1)
    instance.start(MESSENGER_RUN_AMQP_PORT=str(new_port))
    assert instance.state().amqp_urls[0] != old_url
    assert f":{new_port}" in instance.state().amqp_urls[0]
    sam.ok("send", carl.username, "to the chat on the moved broker")
    sam.ok("send", lena.username, "to listen on the moved broker")
    clients.chat.wait_for("to the chat on the moved broker", FLOW_TIMEOUT)
    clients.listen.wait_for("to listen on the moved broker", FLOW_TIMEOUT)
    clients.chat.type_line("typed on the moved broker")
    clients.sams_inbox.wait_for("typed on the moved broker")
    assert clients.listen.count("to listen on the moved broker") == 1
    no_raw_errors(clients.chat.screen())
    no_raw_errors(clients.listen.status())


def test_a_clashing_node_name_fails_with_the_cause_and_leaves_nothing(
    instance: Instance, base: Path
):
    data_dir = base / "clash"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    clash = Instance(data_dir, public_port_for_test())
    node_name = json.loads((instance.data_dir / "instance.json").read_text())["node_name"]
    with clash.output.open("ab") as out:
        process = subprocess.run(
            [sys.executable, "-m", "deploy.run"],
            env={**clash.env(), "MESSENGER_RUN_NODE_NAME": node_name},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT,
            check=False,
        )
    assert process.returncode == 1
    (error,) = [line for line in clash.log().splitlines() if "could not start Messenger" in line]
    assert f"another node named {node_name}@localhost already runs" in error
    assert "duplicate_node_name" in error and "MESSENGER_RUN_NODE_NAME" in error
    with pytest.raises(httpx.ConnectError):  # its auth service was stopped again
        httpx.get(f"{clash.url}/healthz", timeout=5)
    assert httpx.get(f"{instance.url}/healthz", timeout=5).status_code == 200
