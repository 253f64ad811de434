"""Drive compose.yaml with the real `docker compose` (v2), as an operator would.

Each `Deployment` is a compose project of its own (`-p`), on host ports nobody uses, so it
never meets a deployment somebody else runs on this machine. The image names come from the
environment (MESSENGER_RABBITMQ_IMAGE, MESSENGER_PYTHON_IMAGE, MESSENGER_IMAGE: what
deploy/images/local.env sets); unset, compose.yaml's defaults (the official images) apply.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local_broker import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
# What a test may pass on from its own environment: the images, and where the engine is.
PASSED_ON = ("MESSENGER_RABBITMQ_IMAGE", "MESSENGER_PYTHON_IMAGE", "MESSENGER_IMAGE")
UP_TIMEOUT = 300  # seconds for `up --wait`: a cold cluster needs about two minutes here


class ComposeError(AssertionError):
    """A `docker compose` command failed; the message holds its output."""


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=30, check=False
    )


def compose_v2_missing() -> str | None:
    """Why `docker compose` (v2) cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no `docker` command"
    try:
        version = _docker("compose", "version", "--short")
        engine = _docker("info", "--format", "{{.ServerVersion}}")
    except subprocess.TimeoutExpired:
        return "`docker` does not answer"
    if version.returncode != 0 or not version.stdout.strip().lstrip("v").startswith("2"):
        return "Compose v2 (`docker compose`) is not installed"
    if engine.returncode != 0:
        return f"no Docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'default')})"
    return None


@dataclass
class Deployment:
    """One compose project: `up`, `kill`, `down -v`, and what is left of it afterwards."""

    settings: dict[str, str] = field(default_factory=dict)
    project: str = field(default_factory=lambda: f"messenger-test-{uuid.uuid4().hex[:8]}")
    public_port: int = field(default_factory=free_port)
    amqp_ports: tuple[int, int, int] = field(
        default_factory=lambda: (free_port(), free_port(), free_port())
    )

    @property
    def url(self) -> str:
        """The public account API, the client's MESSENGER_URL."""
        return f"http://127.0.0.1:{self.public_port}"

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MESSENGER_", "COMPOSE_")) or k in PASSED_ON
        }
        env.update(
            MESSENGER_PUBLIC_PORT=str(self.public_port),
            MESSENGER_AMQP_PORT=str(self.amqp_ports[0]),
            MESSENGER_AMQP_PORT_2=str(self.amqp_ports[1]),
            MESSENGER_AMQP_PORT_3=str(self.amqp_ports[2]),
        )
        env.update(self.settings)
        return env

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        """`docker compose ARGS` in this project; its output (stdout and stderr)."""
        command = ["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        try:
            done = subprocess.run(
                command,
                env=self.env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ComposeError(f"{' '.join(command[3:])}: no answer after {timeout:.0f} s") from exc
        output = done.stdout + done.stderr
        if check and done.returncode != 0:
            raise ComposeError(
                f"docker compose {' '.join(args)} exited {done.returncode}:\n{output}"
            )
        return output

    def up(self, *services: str, build: bool = False) -> float:
        """`up --wait` (with `--build` when asked): every service healthy, or one-shots
        completed. Returns how long it took, in seconds."""
        started = time.monotonic()
        self.compose(
            "up",
            "--detach",
            "--wait",
            "--wait-timeout",
            str(UP_TIMEOUT),
            *(["--build"] if build else []),
            *services,
            timeout=UP_TIMEOUT + 300,  # `--build` comes first
        )
        return time.monotonic() - started

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=300)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "200", check=False, timeout=60)

    def exec(self, service: str, *command: str, check: bool = True) -> str:
        return self.compose("exec", "-T", service, *command, check=check)

    def published(self) -> set[tuple[str, int]]:
        """(service, host port) of every port published by this project's containers."""
        result: set[tuple[str, int]] = set()
        for line in self.compose("ps", "--format", "json").splitlines():
            if not line.strip().startswith("{"):
                continue
            container = json.loads(line)
            for port in container.get("Publishers") or []:
                if port.get("PublishedPort"):
                    result.add((container["Service"], int(port["PublishedPort"])))
        return result

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found: dict[str, list[str]] = {}
        for kind, command in (
            ("containers", ["docker", "ps", "--all", "--quiet", "--filter", label]),
            ("volumes", ["docker", "volume", "ls", "--quiet", "--filter", label]),
            ("networks", ["docker", "network", "ls", "--quiet", "--filter", label]),
        ):
            out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
            found[kind] = out.stdout.split()
        return found
