"""The system under benchmark: a private broker node, the auth service, relays, as processes.

Everything listens on 127.0.0.1 and lives in one temporary directory removed at the end.
The auth service runs with its production argon2 settings (the benchmark measures what a
real deployment costs); the relay with its defaults.

This wiring mirrors tests/integration/stack.py; the shared part (start a node, an auth
service, relays with their environments) would fit in deploy/ for both to import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pika
import psutil

from broker.params import connection_parameters
from deploy.local_broker import LocalNode, free_port, service_passwords
from deploy.processes import ServiceProcess
from protocol.topology import VHOST

logger = logging.getLogger(__name__)

BENCH_USER = "bench"  # an internal broker user for the ceiling baselines (plain queues)


# The relay's rate limits off (a rate of 0): for scenarios that measure throughput.
UNLIMITED_RELAY = {
    "MESSENGER_RELAY_SENDER_RATE": "0",
    "MESSENGER_RELAY_RECIPIENT_RATE": "0",
    "MESSENGER_RELAY_RECEIPT_RATE": "0",
}


class StackError(RuntimeError):
    """A part of the system under benchmark did not start."""


@dataclass
class Account:
    username: str
    password: str
    token: str = ""

    def signup_body(self) -> dict[str, str]:
        return {
            "username": self.username,
            "display_name": f"Bench {self.username}",
            "password": self.password,
        }


@dataclass
class BenchStack:
    workdir: Path
    node: LocalNode
    broker_api_port: int
    public_port: int
    bench_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    auth: ServiceProcess | None = None
    relays: list[ServiceProcess] = field(default_factory=list)
    auth_overrides: dict[str, str] = field(default_factory=dict)

    # -- the broker ------------------------------------------------------------------------

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def params(self, username: str, password: str) -> pika.ConnectionParameters:
        return connection_parameters(
            (self.node.host, self.node.amqp_port),
            vhost=VHOST,
            username=username,
            password=password,
            connection_attempts=3,
            retry_delay=0.5,
            socket_timeout=10,
            blocked_connection_timeout=60,
        )

    def bench_params(self) -> pika.ConnectionParameters:
        """The internal `bench` user: may declare and use plain queues (the baselines)."""
        return self.params(BENCH_USER, self.bench_password)

    def add_bench_user(self) -> None:
        self.node.ctl("add_user", BENCH_USER, self.bench_password)
        self.node.ctl(
            "set_permissions",
            "-p",
            VHOST,
            BENCH_USER,
            "^bench\\.",
            "^(bench\\..*|amq\\.default)$",
            "^bench\\.",
        )

    def broker_rss_mb(self) -> float:
        pid = self.node.beam_pid()
        return rss_mb(pid) if pid else float("nan")

    def eval(self, expression: str) -> str:
        """Evaluate an Erlang expression on the node (for switching the auth cache off)."""
        return self.node.ctl("eval", expression).strip()

    # -- the auth service --------------------------------------------------------------------

    def auth_env(self, **overrides: str) -> dict[str, str]:
        env = {
            "MESSENGER_AUTH_DB_PATH": str(self.workdir / "users.sqlite3"),
            "MESSENGER_AUTH_PUBLIC_HOST": "127.0.0.1",
            "MESSENGER_AUTH_PUBLIC_PORT": str(self.public_port),
            "MESSENGER_AUTH_BROKER_API_HOST": "127.0.0.1",
            "MESSENGER_AUTH_BROKER_API_PORT": str(self.broker_api_port),
            "MESSENGER_AUTH_AMQP_HOST": self.node.host,
            "MESSENGER_AUTH_AMQP_PORT": str(self.node.amqp_port),
            "MESSENGER_AUTH_AMQP_PASSWORD": self.node.service_passwords["auth"],
            "MESSENGER_AUTH_PUBLIC_AMQP_URL": self.node.public_amqp_url,
            "MESSENGER_AUTH_WEB_STOMP_URLS": self.node.web_stomp_url,
            "MESSENGER_AUTH_MANAGEMENT_URLS": self.node.management_url,
            "MESSENGER_AUTH_LOG_LEVEL": "WARNING",
            # A benchmark logs in far more often than a person: keep the limiter out of it.
            "MESSENGER_AUTH_LOGIN_FAILURES_PER_ADDRESS": "1000000",
        }
        env.update(overrides)
        return env

    def start_auth(self, **overrides: str) -> None:
        """Start (or restart with other settings) the auth service on the same store/ports."""
        self.stop_auth()
        self.auth = ServiceProcess(
            module="services.auth",
            args=["serve"],
            env=self.auth_env(**overrides),
            log_path=self.workdir / "auth.log",
        )
        self.auth.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.auth.alive:
                raise StackError(f"the auth service exited:\n{self.auth.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.auth_url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise StackError("the auth service did not answer within 60 s")

    def ensure_auth(self) -> None:
        """Start the auth service (production settings) unless it runs already."""
        if self.auth is None or not self.auth.alive:
            self.start_auth()

    def stop_auth(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None

    def auth_rss_mb(self) -> float:
        return process_rss_mb(self.auth)

    def signup(self, client: httpx.Client, prefix: str = "b") -> Account:
        account = Account(f"{prefix}{uuid.uuid4().hex[:12]}", secrets.token_urlsafe(12))
        response = client.post(
            f"{self.auth_url}/v1/users",
            json=account.signup_body(),
            timeout=120,
        )
        if response.status_code != 201:
            raise StackError(f"sign-up refused: {response.status_code} {response.text[:200]}")
        return account

    def login(self, client: httpx.Client, account: Account) -> Account:
        response = client.post(
            f"{self.auth_url}/v1/sessions",
            json={"username": account.username, "password": account.password},
            timeout=120,
        )
        if response.status_code != 200:
            raise StackError(f"login refused: {response.status_code} {response.text[:200]}")
        account.token = response.json()["token"]
        return account

    def accounts(self, count: int, prefix: str = "b", workers: int = 4) -> list[Account]:
        """`count` signed-up, logged-in users (sign-ups in parallel: argon2 takes a while)."""
        from concurrent.futures import ThreadPoolExecutor

        self.ensure_auth()

        def one(_: int) -> Account:
            with httpx.Client() as client:
                return self.login(client, self.signup(client, prefix))

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, range(count)))

    def meta_json(self) -> str:
        """GET /v1/meta as it came: what a client needs to find the broker."""
        self.ensure_auth()
        response = httpx.get(f"{self.auth_url}/v1/meta", timeout=10)
        response.raise_for_status()
        return response.text

    # -- relays ----------------------------------------------------------------------------

    def start_relays(self, count: int, *, rate_limits: bool = False, **overrides: str) -> None:
        """`count` relays; without `rate_limits` they relay as fast as they can (the
        throughput scenarios send thousands a second from one account)."""
        self.stop_relays()
        limits = {} if rate_limits else UNLIMITED_RELAY
        for index in range(count):
            relay = ServiceProcess(
                module="services.relay",
                args=[],
                env={
                    "MESSENGER_RELAY_AMQP_HOST": self.node.host,
                    "MESSENGER_RELAY_AMQP_PORT": str(self.node.amqp_port),
                    "MESSENGER_RELAY_AMQP_PASSWORD": self.node.service_passwords["relay"],
                    "MESSENGER_RELAY_LOG_LEVEL": "WARNING",
                    **limits,
                    **overrides,
                },
                log_path=self.workdir / f"relay-{index}.log",
            )
            relay.start()
            self.relays.append(relay)
        self.wait_relays_consuming(count)

    def wait_relays_consuming(self, count: int, timeout: float = 30) -> None:
        """Until every outbox shard has an active consumer (or `count` relays connected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for relay in self.relays:
                if not relay.alive:
                    raise StackError(f"a relay exited:\n{relay.log()[-3000:]}")
            out = self.node.ctl(
                "list_queues", "-p", VHOST, "--no-table-headers", "--quiet", "name", "consumers"
            )
            shards = [line.split("\t") for line in out.splitlines() if "relay.outbox." in line]
            if shards and all(int(parts[1]) >= 1 for parts in shards if len(parts) == 2):
                users = self.node.ctl("list_connections", "--no-table-headers", "--quiet", "user")
                if sum(1 for line in users.splitlines() if line.strip() == "relay") >= count:
                    return
            time.sleep(0.2)
        raise StackError(f"relays not consuming after {timeout:.0f}s")

    def stop_relays(self) -> None:
        for relay in self.relays:
            relay.stop()
        self.relays = []

    def relay_rss_mb(self) -> float:
        return sum(process_rss_mb(relay) for relay in self.relays)

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        self.stop_relays()
        self.stop_auth()
        self.node.remove()


class CpuMeter:
    """Cores used by the broker, the relays, the auth service and the whole machine while
    the block runs: tells whether a figure was bound by one process or by the machine."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self.cores: dict[str, float] = {}
        self.seconds = 0.0

    def _processes(self) -> dict[str, list[psutil.Process]]:
        found: dict[str, list[psutil.Process]] = {"broker": [], "relay": [], "auth": []}
        beam = self.stack.node.beam_pid()
        auth = [self.stack.auth] if self.stack.auth else []
        services = {"relay": self.stack.relays, "auth": auth}
        with contextlib.suppress(psutil.Error):
            if beam:
                found["broker"].append(psutil.Process(beam))
            for key, group in services.items():
                for service in group:
                    if service.process is not None:
                        found[key].append(psutil.Process(service.process.pid))
        return found

    @staticmethod
    def _cpu(processes: list[psutil.Process]) -> float:
        total = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def __enter__(self) -> CpuMeter:
        self._procs = self._processes()
        self._start = {key: self._cpu(group) for key, group in self._procs.items()}
        self._machine = psutil.cpu_times()
        self._children = _reaped_children_cpu()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *_exc: object) -> None:
        elapsed = max(1e-9, time.monotonic() - self._t0)
        for key, group in self._procs.items():
            self.cores[key] = (self._cpu(group) - self._start[key]) / elapsed
        # Worker processes (clients, baseline publishers) started and joined inside the block.
        self.cores["clients"] = (_reaped_children_cpu() - self._children) / elapsed
        self.seconds = elapsed
        machine = psutil.cpu_times()
        idle = (machine.idle + machine.iowait) - (self._machine.idle + self._machine.iowait)
        self.cores["machine"] = (psutil.cpu_count() or 1) - idle / elapsed

    def summary(self) -> str:
        c = self.cores
        return (
            f"cores used: broker {c.get('broker', 0):.2f}, relay {c.get('relay', 0):.2f}, "
            f"clients {c.get('clients', 0):.2f}, "
            f"machine {c.get('machine', 0):.2f} of {psutil.cpu_count()}"
        )

    def per_message_us(self, messages: int) -> dict[str, float]:
        """CPU microseconds per message of each part: steadier than rates on a busy box."""
        if messages <= 0:
            return {}
        return {
            key: self.cores[key] * self.seconds / messages * 1e6
            for key in ("broker", "relay", "clients")
            if key in self.cores
        }


def _reaped_children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def rss_mb(pid: int) -> float:
    try:
        rss: int = psutil.Process(pid).memory_info().rss
        return rss / 1e6
    except psutil.Error:
        return float("nan")


def process_rss_mb(service: ServiceProcess | None) -> float:
    if service is None or service.process is None:
        return float("nan")
    return rss_mb(service.process.pid)


@contextlib.contextmanager
def running_stack(keep: bool = False) -> Iterator[BenchStack]:
    """A broker node; the auth service and relays start when a scenario needs them."""
    if shutil.which("rabbitmq-server") is None and not Path("/usr/sbin/rabbitmq-server").exists():
        raise StackError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    workdir = Path(tempfile.mkdtemp(prefix="messenger-bench-"))
    broker_api_port = free_port()
    node = LocalNode(
        auth_url=f"http://127.0.0.1:{broker_api_port}",
        service_passwords=service_passwords(),
    )
    stack = BenchStack(
        workdir=workdir, node=node, broker_api_port=broker_api_port, public_port=free_port()
    )
    try:
        node.start()
        stack.add_bench_user()
        yield stack
    finally:
        with contextlib.suppress(Exception):
            stack.close()
        if keep:
            logger.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
