"""`<data dir>/running.json`: what a running `make run` is made of, for the tools beside it.

Written when everything is up and again after every restart, removed at the end. `make
import` reads the auth service's settings from it (the broker password of the `auth`
service account is generated afresh at each start and exists nowhere else), and the tests
read the PIDs of the parts they kill. It holds that password, so it is readable by its
owner only, like the user store beside it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pydantic import BaseModel

FILE_NAME = "running.json"


class RunningState(BaseModel):
    pid: int  # the `make run` process (deploy/run.py)
    public_url: str
    amqp_urls: list[str]
    data_dir: str
    parts: dict[str, int | None]  # part name -> PID (the Erlang VM's for a broker node)
    restarts: dict[str, int]  # part name -> how often it was restarted
    auth_env: dict[str, str]  # MESSENGER_AUTH_* of the running auth service

    def alive(self) -> bool:
        """Whether the `make run` that wrote this still runs (not a stale file whose PID the
        system has since given to another program)."""
        try:
            command = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return False
        except OSError:
            return True  # cannot tell: better to refuse a second instance than to clash
        return b"deploy.run" in command


def path_in(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def write(data_dir: Path, state: RunningState) -> None:
    """Replace the file atomically, created with mode 0600 (never readable by others)."""
    target = path_in(data_dir)
    temporary = target.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(state.model_dump_json(indent=2) + "\n")
    temporary.replace(target)


def read(data_dir: Path) -> RunningState | None:
    """The state of the instance running on `data_dir`, or None if none runs there."""
    try:
        state = RunningState.model_validate_json(path_in(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return state if state.alive() else None


def remove(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path_in(data_dir).unlink()
