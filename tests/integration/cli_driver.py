"""Drive the `messenger` command as a person would: a subprocess with its own MESSENGER_HOME."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.cli.app import build_app
from clients.cli.edge import run as run_messenger
from tests.integration.stack import AuthService, unique_username

COMMAND = [sys.executable, "-m", "clients.cli"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def error_line(self) -> str:
        """The one line on stderr (asserting there is exactly one, and no traceback)."""
        lines = self.err.strip("\n").split("\n")
        assert len(lines) == 1 and lines[0], f"not one line on stderr:\n{self.err}"
        assert "Traceback" not in self.err
        return lines[0]


@dataclass
class Person:
    """One user of the client, with a home of their own on this machine."""

    home: Path
    server: str
    username: str
    password: str
    display_name: str

    @classmethod
    def new(cls, tmp: Path, auth: AuthService, prefix: str, display_name: str) -> Person:
        username = unique_username(prefix)
        return cls(tmp / username, auth.url, username, secrets.token_urlsafe(12), display_name)

    @classmethod
    def signed_up(cls, tmp: Path, auth: AuthService, prefix: str, display_name: str) -> Person:
        person = cls.new(tmp, auth, prefix, display_name)
        person.signup()
        return person

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
        env.update(MESSENGER_HOME=str(self.home), MESSENGER_URL=self.server, **extra)
        return env

    def run(self, *args: str, stdin: str | None = None, **env: str) -> Result:
        """`messenger ARGS` in this process (fast): the same edge, the same exit codes."""
        out, err = io.StringIO(), io.StringIO()
        with (
            _environment(self.env(**env)),
            _stdin(stdin or ""),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = run_messenger(build_app(), list(args))
        return Result(code, out.getvalue(), err.getvalue())

    def spawn(self, *args: str, stdin: str | None = None, **env: str) -> Result:
        """`messenger ARGS` as a process of its own, exactly as a shell runs it."""
        done = subprocess.run(
            [*COMMAND, *args],
            env=self.env(**env),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, stdin: str | None = None, **env: str) -> Result:
        """`run`, asserting it succeeded."""
        result = self.run(*args, stdin=stdin, **env)
        assert result.code == 0, f"messenger {' '.join(args)} failed ({result.code}):\n{result.err}"
        return result

    def signup(self) -> Result:
        return self.ok(
            "signup",
            self.username,
            "--display-name",
            self.display_name,
            "--password-stdin",
            stdin=self.password + "\n",
        )

    def login(self) -> Result:
        return self.ok("login", self.username, "--password-stdin", stdin=self.password + "\n")


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _stdin(text: str) -> Iterator[None]:
    saved = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved
