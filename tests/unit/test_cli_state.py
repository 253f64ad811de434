"""Where the client keeps its session, and who may read it."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clients.library.state import (
    CorruptState,
    Paths,
    StoredSession,
    forget_session,
    load_session,
    save_session,
)


def session(expires_in: timedelta = timedelta(days=1)) -> StoredSession:
    return StoredSession(
        server="http://x:1",
        username="alice",
        token="secret-token",
        expires_at=datetime.now(UTC) + expires_in,
        display_name="Alice",
    )


def test_messenger_home_holds_everything(tmp_path: Path):
    paths = Paths.from_env({"MESSENGER_HOME": str(tmp_path)})
    assert paths.session_file == tmp_path / "session.json"
    assert paths.history_file("bob") == tmp_path / "users" / "bob" / "history.sqlite3"


def test_without_messenger_home_the_platform_dirs_are_used():
    paths = Paths.from_env({})
    assert "messenger" in str(paths.config_dir) and "messenger" in str(paths.data_dir)


def test_the_session_file_is_readable_by_its_owner_only(tmp_path: Path):
    paths = Paths.from_env({"MESSENGER_HOME": str(tmp_path / "home")})
    save_session(paths, session())
    assert stat.S_IMODE(paths.session_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.config_dir.stat().st_mode) == 0o700


def test_a_session_round_trips_and_can_be_forgotten(tmp_path: Path):
    paths = Paths.from_env({"MESSENGER_HOME": str(tmp_path)})
    original = session()
    save_session(paths, original)
    assert load_session(paths) == original
    assert forget_session(paths)
    assert load_session(paths) is None
    assert not forget_session(paths)


def test_an_expired_session_says_so():
    assert session(timedelta(seconds=-1)).expired
    assert not session().expired


def test_a_damaged_session_file_is_a_readable_error(tmp_path: Path):
    paths = Paths.from_env({"MESSENGER_HOME": str(tmp_path)})
    paths.session_file.write_text("{not json")
    with pytest.raises(CorruptState, match="damaged"):
        load_session(paths)
