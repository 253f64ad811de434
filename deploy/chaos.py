"""`make chaos`: break a running `make run` on purpose, under traffic, and publish what it did.

One instance of `make run` (deploy/run.py) is started on a fresh data directory. One user
sends to another, at a steady pace, through the client library exactly as `messenger send`
does (a bounded wait, an honest answer); the other consumes with the library as `messenger
listen` does (reconnecting for as long as it runs). Meanwhile each fault of the matrix is
applied in turn, `rounds` times: SIGKILL of the relay, of the auth service, of the broker
node (the supervisor restarts each). Every message carries its fault, round and sequence
number, so the report can say for each fault how many messages were sent, accepted (the
relay answered), held (the broker confirmed, the relay had not answered yet), refused or
uncertain, how many were seen, lost (accepted or held, never seen), shown twice (seen under
two server ids: a person would see it twice), reordered (seen after a later one), how long
until the part was back (its new process runs and, for the broker, takes logins) and until
delivery resumed (the first message sent after the kill was seen). The report is written
as Markdown (docs/reliability.md by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from clients.library.accounts import AccountsClient
from clients.library.connection import FOREVER, Connection
from clients.library.errors import (
    BrokerRefused,
    DeliveryUncertain,
    MessageRejected,
    MessengerError,
    NotConfirmed,
)
from clients.library.messaging import MessengerConnection
from deploy import run_state
from deploy.instance import stable_ports
from protocol.accounts import Meta
from protocol.messages import DeliveredMessage
from services.logs import configure_logging

logger = logging.getLogger("messenger.chaos")

REPO = Path(__file__).resolve().parent.parent
# make run's output, kept after the run (its data directory is removed).
LOGS = Path(tempfile.gettempdir()) / "messenger-chaos-logs"
FAULTS = ("relay", "auth service", "broker node")
# With --cluster, a second scenario: `make run CLUSTER=1` (three nodes, quorum queues), the
# node every client and service uses first SIGKILLed.
CLUSTER_FAULTS = ("cluster node",)
ROW_NAMES = {
    "baseline": "none (baseline, one node)",
    "relay": "SIGKILL relay",
    "auth service": "SIGKILL auth service",
    "broker node": "SIGKILL broker node",
    "cluster baseline": "none (baseline, cluster of three)",
    "cluster node": "SIGKILL the first of three cluster nodes",
}
START_TIMEOUT = 180.0
BACK_TIMEOUT = 120.0
SETTLE_SECONDS = 4.0  # of steady traffic before each fault, and after the part is back
DRAIN_TIMEOUT = 60.0
SEND_TIMEOUT = 5.0  # what `messenger send` waits


@dataclass
class Outcome:
    """What the sender was told about one message."""

    fault: str
    round: int
    seq: int
    sent_at: float
    verdict: str = "pending"  # accepted | held | refused | not sent | uncertain


@dataclass
class Window:
    """One fault, applied once: when, and when it was over."""

    fault: str
    round: int
    killed_at: float = 0.0
    back_after: float | None = None
    resumed_after: float | None = None
    # The receiver's connection open again, counted from the kill (None: never lost).
    relisten_after: float | None = None


@dataclass
class Traffic:
    """The sender's outcomes and the receiver's sightings, shared by the two threads."""

    label: tuple[str, int] = ("baseline", 0)
    outcomes: list[Outcome] = field(default_factory=list)
    seen: list[tuple[str, str, float]] = field(default_factory=list)  # text, server id, when
    reconnected: list[float] = field(default_factory=list)  # the receiver's, when
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)  # the receiver's
    stop_sending: threading.Event = field(default_factory=threading.Event)


class Instance:
    """`python -m deploy.run` on a private data directory, for as long as the run lasts."""

    def __init__(self, data_dir: Path, logs: Path, cluster: bool = False) -> None:
        self.data_dir = data_dir / "cluster" if cluster else data_dir  # where running.json is
        self.public_port = stable_ports(1)[0]
        self.log_path = logs / ("make-run-cluster.log" if cluster else "make-run.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
        env.update(
            MESSENGER_RUN_DATA_DIR=str(data_dir),
            MESSENGER_RUN_PUBLIC_PORT=str(self.public_port),
            MESSENGER_RUN_DOCKER="false",
        )
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "deploy.run", *(["--cluster"] if cluster else [])],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while run_state.read(self.data_dir) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"make run did not start; see {self.log_path}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def part(self, fault: str) -> tuple[str, int]:
        """The part a fault kills: by name, or for `cluster node` the first node."""
        state = run_state.read(self.data_dir)
        assert state is not None
        prefix = "broker node" if fault == "cluster node" else fault
        name = next(n for n in state.parts if n.startswith(prefix))
        pid = state.parts[name]
        assert pid is not None
        return name, pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=120)


def _user(accounts: AccountsClient, prefix: str) -> tuple[str, str]:
    username = f"{prefix}{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(12)
    accounts.signup(username, prefix, password)
    return username, accounts.login(username, password).token


def _connect(url: str, meta: Meta, username: str, token: str, window: float) -> MessengerConnection:
    def check_session() -> bool | None:
        try:
            with AccountsClient(url, timeout=2) as accounts:
                return accounts.current_session(token).username == username
        except MessengerError:
            return None

    def discover() -> Meta:
        with AccountsClient(url, timeout=2) as accounts:
            return accounts.meta()

    connection = Connection.open(
        meta, username, token, discover=discover, check_session=check_session
    )
    return MessengerConnection(connection, reconnect_window=window)


def _send_loop(
    traffic: Traffic, url: str, meta: Meta, sender: tuple[str, str], to: str, rate: float
) -> None:
    """`messenger send` at `rate` per second, one connection, a bounded wait per message."""
    connection: MessengerConnection | None = None
    seq = 0
    while not traffic.stop_sending.is_set():
        started = time.monotonic()
        fault, round_ = traffic.label
        seq += 1
        outcome = Outcome(fault, round_, seq, time.monotonic())
        with traffic.lock:
            traffic.outcomes.append(outcome)
        try:
            if connection is None:
                connection = _connect(url, meta, *sender, window=SEND_TIMEOUT)
            connection.send(to, f"{fault}|{round_}|{seq}", timeout=SEND_TIMEOUT)
            outcome.verdict = "accepted"
        except NotConfirmed:
            outcome.verdict = "held"
        except (MessageRejected, BrokerRefused):
            outcome.verdict = "refused"
        except MessengerError as exc:
            outcome.verdict = "uncertain" if isinstance(exc, DeliveryUncertain) else "not sent"
            if connection is not None and not connection.connection.is_open:
                connection.close()
                connection = None
        traffic.stop_sending.wait(max(0.0, 1.0 / rate - (time.monotonic() - started)))
    if connection is not None:
        connection.close()


def _receive_loop(
    traffic: Traffic, url: str, meta: Meta, receiver: tuple[str, str], ready: threading.Event
) -> None:
    connection = _connect(url, meta, *receiver, window=FOREVER)

    connection.connection.outage.report = lambda line: logger.info("receiver: %s", line)
    connection.connection.add_resume_hook(lambda: traffic.reconnected.append(time.monotonic()))

    def on_messages(messages: list[DeliveredMessage]) -> None:
        now = time.monotonic()
        with traffic.lock:
            traffic.seen.extend((m.text, m.id, now) for m in messages)

    ready.set()

    def stop_when_told() -> None:
        traffic.stop.wait()
        connection.stop()

    threading.Thread(target=stop_when_told, daemon=True).start()
    with connection:
        connection.consume_batches(on_messages)


def _wait_steady(traffic: Traffic, label: tuple[str, int], seconds: float) -> None:
    """Until messages sent under `label` have been arriving for `seconds`."""
    deadline = time.monotonic() + BACK_TIMEOUT
    first_seen: float | None = None
    prefix = f"{label[0]}|{label[1]}|"
    while time.monotonic() < deadline:
        with traffic.lock:
            hit = next((when for text, _, when in traffic.seen if text.startswith(prefix)), None)
        first_seen = first_seen or hit
        if first_seen is not None and time.monotonic() - first_seen >= seconds:
            return
        time.sleep(0.1)
    raise RuntimeError(f"messages stopped flowing during {label[0]} round {label[1]}")


def _apply(instance: Instance, traffic: Traffic, window: Window) -> None:
    name, victim = instance.part(window.fault)
    label = (window.fault, window.round)
    traffic.label = label
    _wait_steady(traffic, label, SETTLE_SECONDS)
    window.killed_at = time.monotonic()
    logger.info("SIGKILL of %s (pid %d), round %d", name, victim, window.round)
    os.kill(victim, signal.SIGKILL)
    deadline = window.killed_at + BACK_TIMEOUT
    while window.back_after is None or window.resumed_after is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not come back within {BACK_TIMEOUT:g} s")
        now = time.monotonic()
        if window.back_after is None:
            state = run_state.read(instance.data_dir)
            if state is not None and state.parts.get(name) not in (None, victim):
                window.back_after = now - window.killed_at
        if window.resumed_after is None:
            with traffic.lock:
                sent_after = {
                    f"{o.fault}|{o.round}|{o.seq}"
                    for o in traffic.outcomes
                    if o.sent_at > window.killed_at
                }
                when = next((w for t, _, w in traffic.seen if t in sent_after), None)
            if when is not None:
                window.resumed_after = when - window.killed_at
        time.sleep(0.05)
    logger.info(
        "%s back after %.1f s, delivery resumed after %.1f s",
        name,
        window.back_after,
        window.resumed_after,
    )
    time.sleep(SETTLE_SECONDS)
    online = next((when for when in traffic.reconnected if when > window.killed_at), None)
    if online is not None:
        window.relisten_after = online - window.killed_at


@dataclass
class Tally:
    lost_messages: list[str] = field(default_factory=list)
    sent: int = 0
    accepted: int = 0
    held: int = 0
    refused: int = 0
    not_sent: int = 0
    uncertain: int = 0
    seen: int = 0
    lost: int = 0
    twice: int = 0
    reordered: int = 0


def _tally(traffic: Traffic, fault: str) -> Tally:
    tally = Tally()
    outcomes = [o for o in traffic.outcomes if o.fault == fault]
    texts = {f"{o.fault}|{o.round}|{o.seq}": o for o in outcomes}
    ids: dict[str, set[str]] = {}
    order: list[tuple[int, int]] = []
    for text, server_id, _ in traffic.seen:
        if text in texts:
            if text not in ids:
                outcome = texts[text]
                order.append((outcome.round, outcome.seq))
            ids.setdefault(text, set()).add(server_id)
    tally.sent = len(outcomes)
    for outcome in outcomes:
        verdict = outcome.verdict
        tally.accepted += verdict == "accepted"
        tally.held += verdict == "held"
        tally.refused += verdict == "refused"
        tally.not_sent += verdict == "not sent"
        tally.uncertain += verdict == "uncertain"
        text = f"{outcome.fault}|{outcome.round}|{outcome.seq}"
        if verdict in ("accepted", "held") and text not in ids:
            tally.lost += 1
            tally.lost_messages.append(text)
    tally.seen = len(ids)
    tally.twice = sum(1 for server_ids in ids.values() if len(server_ids) > 1)
    highest: tuple[int, int] = (-1, -1)
    for key in order:
        if key < highest:
            tally.reordered += 1
        highest = max(highest, key)
    return tally


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f} s"
    return f"{min(values):.1f}-{max(values):.1f} s (median {statistics.median(values):.1f})"


def _report(
    traffic: Traffic,
    windows: list[Window],
    rounds: int,
    rate: float,
    seconds: float,
    cluster: bool,
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    lines = [
        "# Reliability: what delivery survives",
        "",
        f"Measured by `make chaos` on {when} ({rounds} round(s) of each fault, "
        f"{rate:g} messages/s, {seconds:.0f} s in all, load average {load:.1f} on "
        f"{os.cpu_count()} cores). Re-run it to refresh this file.",
        "",
        "One `make run` (private RabbitMQ node, auth service, one relay, under its"
        " supervisor) on a fresh data directory. One user sends to another at a steady"
        " pace through the client library, exactly as `messenger send` does: each message"
        f" waits at most {SEND_TIMEOUT:g} s and is told what is true of it. The other user"
        " consumes as `messenger listen` does, reconnecting for as long as it runs. Each"
        " fault is a SIGKILL of one part while the traffic runs; the supervisor restarts it."
        + (
            " Then the same on `make run CLUSTER=1` (three nodes, quorum queues), whose first"
            " node (the one every client and service uses first) is SIGKILLed: they move to"
            " the next node at once."
            if cluster
            else ""
        ),
        "",
        "| fault | runs | sent | accepted | held | not sent | uncertain | seen | lost |"
        " shown twice | reordered | part back after | delivery resumed after |"
        " receiver back |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = ["baseline", *FAULTS]
    if cluster:
        rows += ["cluster baseline", *CLUSTER_FAULTS]
    for fault in rows:
        tally = _tally(traffic, fault)
        runs = [w for w in windows if w.fault == fault]
        back = _span([w.back_after for w in runs if w.back_after is not None])
        resumed = _span([w.resumed_after for w in runs if w.resumed_after is not None])
        relisten = [
            f"{w.relisten_after:.1f} s ({w.relisten_after - w.back_after:+.1f} s)"
            for w in runs
            if w.relisten_after is not None and w.back_after is not None
        ]
        if not runs:
            receiver = "-"
        elif relisten:
            receiver = ", ".join(relisten)
        else:
            receiver = "stayed connected"
        name = ROW_NAMES[fault]
        lines.append(
            f"| {name} | {len(runs) or '-'} | {tally.sent} | {tally.accepted} | {tally.held}"
            f" | {tally.not_sent + tally.refused} | {tally.uncertain} | {tally.seen}"
            f" | **{tally.lost}** | **{tally.twice}** | {tally.reordered}"
            f" | {back if runs else '-'} | {resumed if runs else '-'} | {receiver} |"
        )
    lost = [text for fault in rows for text in _tally(traffic, fault).lost_messages]
    if lost:
        lines += ["", "Lost (fault|round|sequence number): " + ", ".join(lost)]
        logger.error("lost: %s", ", ".join(lost))
    lines += [
        "",
        "What the columns mean:",
        "",
        "- **sent**: messages the sender tried to send while this fault was being applied"
        " (from the steady traffic before the kill until the next fault).",
        "- **accepted**: the relay answered `accepted` (`messenger send` prints ✓, exit 0).",
        "- **held**: the broker confirmed the message but the relay had not answered within"
        f" {SEND_TIMEOUT:g} s (`messenger send`: queued, the server holds it and will deliver"
        " it; exit 1).",
        "- **not sent**: the client could not hand the message over (no connection, or the"
        " login could not be checked) and said it was not sent.",
        "- **uncertain**: published, but the connection went before the broker confirmed"
        " it; the sender is told that it is delivered if the broker had stored it, and that"
        " sending it again could deliver it twice.",
        "- **seen**: distinct messages the receiver got. **lost**: accepted or held, never"
        " seen (must be 0). **shown twice**: seen under two different server ids, which a"
        " client would show twice (must be 0; a redelivery under the same id is shown once"
        " and not counted). **reordered**: seen after a message the same sender sent later.",
        "- **part back after**: from the SIGKILL until the supervisor's new process runs (a"
        " broker node: until it takes logins again).",
        "- **delivery resumed after**: from the SIGKILL until the receiver saw the first"
        " message sent after it.",
        "- **receiver back**: when the receiver's connection was open again, from the"
        " SIGKILL, and in brackets relative to the part being back (negative: it had moved"
        " to another node before); runs in which its connection was never lost are left"
        " out (`stayed connected`: in none of them).",
        "",
        "An auth service outage does not stop delivery: the clients' broker connections"
        " stay open, and only new logins wait for it. While the relay is down the broker"
        " holds what is sent, and the relay delivers it when it is back. While the broker"
        " node is down nothing can be sent; clients retry every second and pick up the"
        " first message within about a second of the broker taking logins again.",
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _data_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="messenger-chaos-"))
    base.chmod(0o755)  # the broker may run as the rabbitmq user
    data_dir = base / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    try:
        yield data_dir
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(rounds: int, rate: float, out: Path, cluster: bool = False, single: bool = True) -> str:
    """The whole matrix; returns the report (also written to `out`)."""
    began = time.monotonic()
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    traffic, windows = _scenario(rounds, rate, cluster=False) if single else (Traffic(), [])
    if cluster:
        more_traffic, more_windows = _scenario(rounds, rate, cluster=True)
        traffic.outcomes += more_traffic.outcomes
        traffic.seen += more_traffic.seen
        windows += more_windows
    report = _report(traffic, windows, rounds, rate, time.monotonic() - began, cluster)
    out.write_text(report)
    return report


def _scenario(rounds: int, rate: float, cluster: bool) -> tuple[Traffic, list[Window]]:
    """One `make run` (or `make run CLUSTER=1`) under traffic, each fault `rounds` times."""
    baseline = "cluster baseline" if cluster else "baseline"
    faults = CLUSTER_FAULTS if cluster else FAULTS
    with _data_dir() as data_dir:
        instance = Instance(data_dir, LOGS, cluster)
        logger.info(
            "make run%s is up; its output: %s", " --cluster" if cluster else "", instance.log_path
        )
        try:
            with AccountsClient(instance.url) as accounts:
                meta = accounts.meta()
                sender = _user(accounts, "sender")
                receiver = _user(accounts, "receiver")
            traffic = Traffic(label=(baseline, 0))
            ready = threading.Event()
            threads = [
                threading.Thread(
                    target=_receive_loop,
                    args=(traffic, instance.url, meta, receiver, ready),
                    daemon=True,
                ),
                threading.Thread(
                    target=_send_loop,
                    args=(traffic, instance.url, meta, sender, receiver[0], rate),
                    daemon=True,
                ),
            ]
            threads[0].start()
            ready.wait(30)
            threads[1].start()
            _wait_steady(traffic, (baseline, 0), SETTLE_SECONDS * 2)
            windows: list[Window] = []
            for round_ in range(1, rounds + 1):
                for fault in faults:
                    window = Window(fault, round_)
                    windows.append(window)
                    _apply(instance, traffic, window)
            # The sender stops first (its last send answered), then everything accepted or
            # held must arrive before the receiver stops.
            traffic.stop_sending.set()
            threads[1].join(SEND_TIMEOUT * 3)
            _drain(traffic)
            traffic.stop.set()
            threads[0].join(30)
        finally:
            instance.stop()
    return traffic, windows


def _drain(traffic: Traffic) -> None:
    """Wait until everything accepted or held has been seen (or DRAIN_TIMEOUT)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        with traffic.lock:
            seen = {text for text, _, _ in traffic.seen}
            missing = [
                o
                for o in traffic.outcomes
                if o.verdict in ("accepted", "held") and f"{o.fault}|{o.round}|{o.seq}" not in seen
            ]
        if not missing:
            return
        time.sleep(0.2)


DEFAULT_OUT = REPO / "docs" / "reliability.md"


def main(
    rounds: Annotated[int, typer.Option(help="How often each fault is applied.")] = 1,
    rate: Annotated[float, typer.Option(help="Messages sent per second.")] = 5.0,
    cluster: Annotated[
        bool, typer.Option("--cluster", help="Also kill a node of `make run CLUSTER=1`.")
    ] = False,
    single: Annotated[
        bool, typer.Option(help="The one-node `make run` (--no-single: the cluster only).")
    ] = True,
    out: Annotated[Path, typer.Option(help="Where the report goes.")] = DEFAULT_OUT,
) -> None:
    """Kill the relay, auth service and broker node of a `make run`, under traffic; report."""
    configure_logging()
    try:
        report = run(rounds, rate, out, cluster, single)
    except RuntimeError as exc:
        logger.error("chaos run failed: %s", exc)
        raise typer.Exit(1) from None
    logger.info("report written to %s", out)
    sys.stdout.write(report)


if __name__ == "__main__":
    typer.run(main)
