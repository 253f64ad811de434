"""Where a client keeps its state, and the session file.

Everything lives under `MESSENGER_HOME` when it is set (so several people, or tests, can
share a machine), otherwise in the platform's per-user config and data directories. The
session file holds the token of the current login and is readable by its owner only; a
password is never written anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import platformdirs

from clients.library.errors import MessengerError

APP_NAME = "messenger"
HOME_ENV = "MESSENGER_HOME"
SESSION_FILE = "session.json"


@dataclass(frozen=True)
class Paths:
    config_dir: Path  # the session file
    data_dir: Path  # local history, one database per user

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ
        home = env.get(HOME_ENV)
        if home:
            root = Path(home).expanduser()
            return cls(config_dir=root, data_dir=root)
        return cls(
            config_dir=platformdirs.user_config_path(APP_NAME),
            data_dir=platformdirs.user_data_path(APP_NAME),
        )

    @property
    def session_file(self) -> Path:
        return self.config_dir / SESSION_FILE

    def history_file(self, username: str) -> Path:
        return self.data_dir / "users" / username / "history.sqlite3"


@dataclass(frozen=True)
class StoredSession:
    server: str
    username: str
    token: str
    expires_at: datetime
    display_name: str | None = None
    # The device this login created (protocol.conversations.DeviceInfo); None from a server
    # without devices, whose clients consume the legacy `inbox.<username>`.
    device_id: str | None = None
    device_queue: str | None = None
    # When this device's queue began (the client's clock): what a legacy inbox holds from
    # before is not in it (clients/library/devices.py).
    device_since: datetime | None = None

    @property
    def expired(self) -> bool:
        return datetime.now(UTC) >= self.expires_at


class CorruptState(MessengerError):
    """A local state file cannot be read."""


def private_dir(path: Path) -> Path:
    """Create `path` and its missing parents so that only the owner can enter them."""
    missing = [path, *(parent for parent in path.parents if not parent.exists())]
    for level in reversed(missing):
        level.mkdir(exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        path.chmod(0o700)
    return path


def save_session(paths: Paths, session: StoredSession) -> None:
    """Write the session file atomically with mode 0600 (never readable by others, even briefly)."""
    directory = private_dir(paths.config_dir)
    body = json.dumps(
        {
            "server": session.server,
            "username": session.username,
            "token": session.token,
            "expires_at": session.expires_at.isoformat(),
            "display_name": session.display_name,
            "device_id": session.device_id,
            "device_queue": session.device_queue,
            "device_since": session.device_since.isoformat() if session.device_since else None,
        },
        indent=2,
    )
    fd, tmp_name = tempfile.mkstemp(prefix=".session-", dir=directory)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, paths.session_file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def load_session(paths: Paths) -> StoredSession | None:
    """The current session, or None when nobody is logged in here."""
    try:
        raw = paths.session_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptState(
            f"cannot read the session file {paths.session_file}: {exc.strerror}",
            hint="check its permissions, or delete it and log in again",
        ) from exc
    try:
        data = json.loads(raw)
        expires_at = datetime.fromisoformat(data["expires_at"])
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        return StoredSession(
            server=str(data["server"]),
            username=str(data["username"]),
            token=str(data["token"]),
            expires_at=expires_at,
            display_name=data.get("display_name"),
            device_id=data.get("device_id"),
            device_queue=data.get("device_queue"),
            device_since=_moment(data.get("device_since")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptState(
            f"the session file {paths.session_file} is damaged",
            hint="log in again with `messenger login USERNAME`",
        ) from exc


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def forget_session(paths: Paths) -> bool:
    """Delete the session file; True when there was one."""
    try:
        paths.session_file.unlink()
    except FileNotFoundError:
        return False
    return True
