"""A private RabbitMQ node from the installed `rabbitmq-server`, for `make run` and the tests.

It uses the very files docker compose mounts (deploy/rabbitmq/): the runner only appends
what differs per environment (listener port, the auth service's URL, the cache TTL) and
fills the service accounts' password hashes into a copy of definitions.json. Every node gets
its own name, ports and data directory, so a broker some other program started (the system
one on 5672, say) is never used or touched.

Debian's wrapper, run as root, switches to the `rabbitmq` user: the data directory is handed
to that user, and `rabbitmqctl` goes through the same wrapper so both share its cookie.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from broker.params import connection_parameters
from protocol.topology import VHOST

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "rabbitmq"
START_TIMEOUT = 90.0


class BrokerError(RuntimeError):
    """The private node could not be started or stopped."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rabbit_password_hash(password: str) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _accepts_tcp(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def port_is_free(host: str, port: int) -> bool:
    """Whether a listener could bind `host:port` now (nobody else listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the broker binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _is_root() -> bool:
    return os.geteuid() == 0


def _tool(name: str) -> str:
    """The wrapper in /usr/sbin as root (it becomes `rabbitmq`); the plain script otherwise."""
    if not _is_root():
        plain = Path("/usr/lib/rabbitmq/bin") / name
        if plain.exists():
            return str(plain)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/lib/rabbitmq/bin")
    if not found:
        raise BrokerError(
            f"{name} is not installed: install Debian's rabbitmq-server (apt-get install "
            "rabbitmq-server) or run with a Docker engine"
        )
    return found


@dataclass
class LocalNode:
    """One private node. `start()` boots it and waits until AMQP logins work."""

    auth_url: str
    service_passwords: dict[str, str]
    auth_cache_ttl_ms: int = 5_000
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="messenger-rmq-")))
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    web_stomp_port: int = field(default_factory=free_port)  # STOMP over WebSocket, for browsers
    # The management HTTP API: the auth service closes ended sessions' connections through it.
    management_port: int = field(default_factory=free_port)
    name: str = field(default_factory=lambda: f"messenger-{secrets.token_hex(4)}@localhost")
    host: str = "127.0.0.1"
    extra_config: str = ""
    chown_to_rabbitmq: bool = True
    # Set from another thread to abandon a start-up in progress (Ctrl-C during a restart).
    cancel: threading.Event | None = field(default=None, repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _beam: int | None = field(default=None, init=False, repr=False)
    _output_offset: int = field(default=0, init=False, repr=False)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self._forget_previous_run()
        self._check_port_free()
        self._write_files()
        self._output_offset = _size(self.data_dir / "server.out")
        log = (self.data_dir / "server.out").open("ab")
        logger.info("starting RabbitMQ node %s on %s:%d", self.name, self.host, self.amqp_port)
        self._process = subprocess.Popen(
            [_tool("rabbitmq-server")],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the node in order
        )
        log.close()
        try:
            self._wait_until_ready(timeout)
            self._beam = self.beam_pid()
        except BaseException:
            self.stop()
            raise
        logger.info("RabbitMQ node %s ready", self.name)

    def stop(self) -> None:
        """Stop gracefully through rabbitmqctl; fall back to signals. Idempotent.

        Liveness is judged by the Erlang VM's own PID, taken when the node came up: the
        wrapper process we spawned (`su`) can be gone while the VM still runs.
        """
        process, self._process = self._process, None
        beam = self._live_beam()
        if beam is not None:
            logger.info("stopping RabbitMQ node %s", self.name)
            with contextlib.suppress(BrokerError, subprocess.TimeoutExpired):
                self.ctl("stop", timeout=30)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if _wait_gone(beam, timeout=20):
                    break
                logger.warning("node %s still running; sending %s", self.name, sig.name)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(beam, sig)
            _wait_gone(beam, timeout=10)
        self._beam = None
        if process is not None:
            self._reap(process)

    def kill(self) -> None:
        """SIGKILL the Erlang VM: the crash a reliability test wants, not a shutdown."""
        process, self._process = self._process, None
        beam = self._live_beam()
        if beam is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(beam, signal.SIGKILL)
            _wait_gone(beam, timeout=10)
        self._beam = None
        if process is not None:
            self._reap(process)

    def restart(self) -> None:
        """Stop and start again on the same data directory and ports."""
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """The Erlang VM's PID while the node runs."""
        return self._beam

    def exit_cause(self) -> str:
        """Why the node stopped, in a few words, from what it printed since it was started."""
        if self._process is not None:  # its start script reports a signal as it exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        return describe_exit(self.output_since_start())

    def output_since_start(self) -> str:
        """What the node printed to server.out since the last `start()`."""
        path = self.data_dir / "server.out"
        try:
            with path.open("rb") as out:
                out.seek(self._output_offset)
                return out.read().decode(errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        if self._beam is not None:
            return _alive(self._beam)
        return self._process is not None and self._process.poll() is None

    # -- use -------------------------------------------------------------------------------

    @property
    def public_amqp_url(self) -> str:
        """Where clients connect, without credentials."""
        return f"amqp://{self.host}:{self.amqp_port}"

    def connection_parameters(self, username: str, password: str) -> pika.ConnectionParameters:
        return connection_parameters(
            (self.host, self.amqp_port), vhost=VHOST, username=username, password=password
        )

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run `rabbitmqctl` against this node (and only this node)."""
        return self.run_cli("rabbitmqctl", *args, timeout=timeout)

    def run_cli(self, tool: str, *args: str, timeout: float = 60) -> str:
        """Run one of RabbitMQ's CLI tools (`rabbitmqctl`, `rabbitmq-queues`) on this node."""
        result = subprocess.run(
            [_tool(tool), "-n", self.name, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise BrokerError(f"{tool} {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def queue_depths(self) -> dict[str, int]:
        """Ready + unacked messages per queue in our vhost."""
        out = self.ctl(
            "list_queues", "-p", VHOST, "--no-table-headers", "--quiet", "name", "messages"
        )
        depths: dict[str, int] = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 2 and parts[1].strip().isdigit():
                depths[parts[0]] = int(parts[1])
        return depths

    def beam_pid(self) -> int | None:
        pid_file = self.data_dir / "rabbit.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pid_file.read_text().strip())
        return None

    # -- internals -------------------------------------------------------------------------

    def _live_beam(self) -> int | None:
        """The running VM's PID: the one seen at start-up, else the pid file's (a start-up
        that failed half-way may have written it)."""
        for pid in (self._beam, self.beam_pid()):
            if pid is not None and _alive(pid) and self._is_this_node(pid):
                return pid
        return None

    def _is_this_node(self, pid: int) -> bool:
        """A stale pid file may name a PID the system has since given to another program."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except PermissionError:
            return True  # not ours to inspect; trust the pid file
        except OSError:
            return False
        return f"RABBITMQ_NODENAME={self.name}".encode() in environ

    def _forget_previous_run(self) -> None:
        """After a crash: collect the old wrapper and drop the dead VM's PID and pid file."""
        process, self._process = self._process, None
        if process is not None:
            self._reap(process)
        if self._live_beam() is not None:
            raise BrokerError(f"RabbitMQ node {self.name} is still running")
        self._beam = None
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "rabbit.pid").unlink()

    def _env(self) -> dict[str, str]:
        d = self.data_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_FEATURE_FLAGS_FILE=str(d / "feature_flags"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(d / "plugins-expand"),
            RABBITMQ_PID_FILE=str(d / "rabbit.pid"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _write_files(self) -> None:
        d = self.data_dir
        for sub in ("mnesia", "log", "plugins-expand"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # Debian's wrapper leaves the node 1,024 open files; at ~950 connections its
        # database breaks. The env file is sourced by the start script: raise the soft limit.
        (d / "rabbitmq-env.conf").write_text('ulimit -n "$(ulimit -Hn)" 2>/dev/null || true\n')
        shutil.copy(CONFIG_DIR / "enabled_plugins", d / "enabled_plugins")

        definitions = json.loads((CONFIG_DIR / "definitions.json").read_text())
        for user in definitions["users"]:
            password = self.service_passwords.get(user["name"])
            if password is None:
                raise BrokerError(f"no password given for service account {user['name']!r}")
            user["password_hash"] = rabbit_password_hash(password)
        defs_path = d / "definitions.json"
        defs_path.write_text(json.dumps(definitions, indent=2))
        defs_path.chmod(0o600)

        base = (CONFIG_DIR / "rabbitmq.conf").read_text()
        auth = self.auth_url.rstrip("/")
        overrides = "\n".join(
            [
                "",
                "# --- written by deploy/local_broker.py for this node (later keys win) ---",
                f"listeners.tcp.default = {self._listener()}",
                *self._web_stomp_listener(),
                *self._management_listener(),
                f"definitions.local.path = {self._path_seen_by_broker(defs_path)}",
                f"auth_cache.cache_ttl = {self.auth_cache_ttl_ms}",
                *(
                    f"auth_http.{p}_path = {auth}/broker/{p}"
                    for p in ("user", "vhost", "resource", "topic")
                ),
                "log.console = false",
                self.extra_config,
                "",
            ]
        )
        conf_path = d / "rabbitmq.conf"
        conf_path.write_text(base + overrides)
        if self.chown_to_rabbitmq:  # a local node; a container's broker runs as another uid
            conf_path.chmod(0o600)  # the auth URL may hold the run's key to the broker API
        if _is_root() and self.chown_to_rabbitmq:
            _check_reachable_by_others(d)
            shutil.chown(d, "rabbitmq", "rabbitmq")
            for path in d.rglob("*"):
                shutil.chown(path, "rabbitmq", "rabbitmq")

    def _check_port_free(self) -> None:
        if not port_is_free(self.host, self.amqp_port):
            raise BrokerError(
                f"port {self.amqp_port} on {self.host} is in use by another program; "
                "the node needs it for AMQP"
            )

    def _listener(self) -> str:
        return f"{self.host}:{self.amqp_port}"

    def _web_stomp_listener(self) -> list[str]:
        return [f"web_stomp.tcp.ip = {self.host}", f"web_stomp.tcp.port = {self.web_stomp_port}"]

    def _management_listener(self) -> list[str]:
        return [f"management.tcp.ip = {self.host}", f"management.tcp.port = {self.management_port}"]

    @property
    def management_url(self) -> str:
        """The management HTTP API (rabbitmq_management), for the auth service."""
        return f"http://{self.host}:{self.management_port}"

    @property
    def web_stomp_url(self) -> str:
        """The Web STOMP endpoint; the auth service's public listener proxies `/ws` to it."""
        return f"ws://{self.host}:{self.web_stomp_port}/ws"

    def _path_seen_by_broker(self, path: Path) -> Path:
        return path

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        params = self.connection_parameters("relay", self.service_passwords["relay"])
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.cancel is not None and self.cancel.is_set():
                raise BrokerError(f"start-up of RabbitMQ node {self.name} cancelled")
            if not self.running:
                raise BrokerError(
                    f"RabbitMQ node {self.name} exited during start-up: {self.exit_cause()} "
                    f"(its output: {self.data_dir / 'server.out'})"
                )
            if not _accepts_tcp(self.host, self.amqp_port):  # spares pika's loud connect errors
                time.sleep(0.2)
                continue
            try:
                pika.BlockingConnection(params).close()
                return
            except (pika.exceptions.AMQPError, AMQPConnectorException) as exc:
                last_error = exc  # not listening yet, or definitions not loaded yet
                time.sleep(0.25)
        raise BrokerError(f"RabbitMQ node not ready after {timeout:.0f}s ({last_error!r})")

    @staticmethod
    def _reap(process: subprocess.Popen[bytes]) -> None:
        """Collect the wrapper; its process group goes too if it lingers."""
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _check_reachable_by_others(directory: Path) -> None:
    """As root the node runs as `rabbitmq`, which must be able to walk down to its data."""
    for parent in directory.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise BrokerError(
                f"the broker's data directory {directory} is under {parent}, which the "
                "rabbitmq user cannot enter; choose one under /var/lib or /tmp"
            )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# What a node prints when it dies, and what to tell the operator. The Erlang terms are long
# (a supervisor's whole child spec); the atom that names the cause is what matters.
_KNOWN_CAUSES = (
    (
        re.compile(r'duplicate_node_name,"([^"]+)","([^"]+)"'),
        "another node named {0}@{1} already runs on this machine (duplicate_node_name)",
    ),
    (
        re.compile(r'could_not_start_listener,"?([^",]+)"?,(\d+).*?eaddrinuse'),
        "port {1} on {0} is already in use (eaddrinuse)",
    ),
    (re.compile(r"(eaddrinuse)"), "a port the node needs is already in use (eaddrinuse)"),
    (re.compile(r"(enospc)"), "no space left on the device (enospc)"),
    (re.compile(r"(eacces)"), "permission denied (eacces) on a file or port the node needs"),
)
_SHELL_SIGNAL_WORDS = {"Killed": "SIGKILL", "Terminated": "SIGTERM", "Aborted": "SIGABRT"}
_FATAL_LINE = re.compile(r"^(Kernel pid terminated|init terminating in do_boot|BOOT FAILED)")


def describe_exit(output: str) -> str:
    """The cause of a node's exit, read from what it printed (server.out)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    fatal = [line for line in lines if _FATAL_LINE.match(line)]
    for pattern, message in _KNOWN_CAUSES:
        match = pattern.search("\n".join(fatal) if fatal else output)
        if match:
            return message.format(*match.groups())
    if fatal:
        line = fatal[-1]
        return line if len(line) <= 240 else line[:239] + "…"
    if lines and lines[-1] in _SHELL_SIGNAL_WORDS:  # the start script's shell reports it
        return f"killed by {_SHELL_SIGNAL_WORDS[lines[-1]]}"
    if lines:
        return f"it stopped; its last line: {lines[-1][:200]}"
    return "it stopped without a word"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def service_passwords() -> dict[str, str]:
    """Fresh random passwords for the broker's service accounts of one local run."""
    return {"relay": secrets.token_urlsafe(24), "auth": secrets.token_urlsafe(24)}
