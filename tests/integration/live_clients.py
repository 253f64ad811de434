"""Clients left running while the server is broken under them: `listen` and `chat`.

`Listener` is `messenger listen --json` as its own process, its output read as it comes;
`ChatWindow` is `messenger chat PEER` in a pseudo-terminal (pexpect), typed into as a person
types. Neither is ever restarted by a test: what they show after a fault they had to
recover from by themselves.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pexpect

from tests.integration.cli_driver import COMMAND, Person

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class Listener:
    """`messenger listen --json`: stdout (one JSON object per message) and stderr (status
    lines) go to files, read whenever a test asks."""

    def __init__(self, person: Person, directory: Path) -> None:
        self.out_path = directory / f"{person.username}.listen.out"
        self.err_path = directory / f"{person.username}.listen.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*COMMAND, "listen", "--json"],
                env=person.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def texts(self) -> list[str]:
        lines = self.out_path.read_text(errors="replace").splitlines()
        return [json.loads(line)["text"] for line in lines if line.startswith("{")]

    def count(self, text: str) -> int:
        return self.texts().count(text)

    def status(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds until `text` was shown; AssertionError (with stderr) if it never is."""
        started = time.monotonic()
        while text not in self.texts():
            assert self.process.poll() is None, f"listen exited:\n{self.status()}"
            assert time.monotonic() - started < timeout, (
                f"listen never showed {text!r}; stderr:\n{self.status()}"
            )
            time.sleep(0.05)
        return time.monotonic() - started

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(2)  # Ctrl-C
            try:
                return self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=15)


class ChatWindow:
    """`messenger chat PEER` in a terminal; everything it printed is kept (without escape
    sequences) in `screen()`."""

    def __init__(self, person: Person, peer: str, directory: Path) -> None:
        self.log_path = directory / f"{person.username}.chat.log"
        self._log = self.log_path.open("w")
        env = person.env(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", NO_COLOR="1")
        self.child = pexpect.spawn(
            COMMAND[0],
            [*COMMAND[1:], "chat", peer],
            env=env,
            encoding="utf-8",
            dimensions=(40, 200),
            timeout=30,
        )
        self.child.logfile_read = self._log
        self.child.expect_exact("Chat with")
        self.child.expect_exact("›")  # noqa: RUF001 - the prompt

    def screen(self) -> str:
        self._drain()
        self._log.flush()
        return ANSI.sub("", self.log_path.read_text(errors="replace"))

    def _drain(self) -> None:
        """Read what the chat printed so far (pexpect reads only while expecting)."""
        try:
            while True:
                self.child.read_nonblocking(65536, timeout=0)
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass

    def type_line(self, text: str) -> None:
        self.child.send(text + "\r")

    def wait_for(self, text: str, timeout: float) -> float:
        started = time.monotonic()
        while text not in self.screen():
            assert self.child.isalive(), f"chat exited:\n{self.screen()[-3000:]}"
            assert time.monotonic() - started < timeout, (
                f"chat never showed {text!r}:\n{self.screen()[-3000:]}"
            )
            time.sleep(0.05)
        return time.monotonic() - started

    def close(self) -> int | None:
        try:
            if self.child.isalive():
                self.child.sendcontrol("d")
                self.child.expect(pexpect.EOF, timeout=30)
        finally:
            self.child.close(force=True)
            self._log.close()
        status: int | None = self.child.exitstatus
        return status
