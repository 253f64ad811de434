"""Display names: cache first, one server lookup per name, and never an error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clients.cli.context import Cli, Names
from clients.library.errors import MessengerError, NotFound, ServerUnreachable
from clients.library.history import History
from clients.library.state import Paths
from protocol.accounts import UserPublic


class FakeAccounts:
    def __init__(self, answers: dict[str, UserPublic | MessengerError], calls: list[str]):
        self.answers = answers
        self.calls = calls

    def __enter__(self) -> FakeAccounts:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def user(self, username: str, token: str | None = None) -> UserPublic:
        self.calls.append(username)
        answer = self.answers[username]
        if isinstance(answer, MessengerError):
            raise answer
        return answer


@pytest.fixture
def history(tmp_path: Path):
    with History(tmp_path / "h.sqlite3", "alice") as db:
        yield db


def names_with(
    tmp_path: Path,
    history: History,
    monkeypatch: pytest.MonkeyPatch,
    answers: dict[str, UserPublic | MessengerError],
) -> tuple[Names, list[str]]:
    calls: list[str] = []
    cli = Cli(server_option="http://x", paths=Paths.from_env({"MESSENGER_HOME": str(tmp_path)}))
    monkeypatch.setattr(Cli, "accounts", lambda self, timeout=None: FakeAccounts(answers, calls))
    return Names(cli, history, "token"), calls


def test_a_name_is_fetched_once_and_cached(tmp_path, history, monkeypatch):
    names, calls = names_with(
        tmp_path, history, monkeypatch, {"bob": UserPublic(username="bob", display_name="Bob")}
    )
    assert names("bob") == names("bob") == "Bob"
    assert calls == ["bob"]
    assert history.cached_display_name("bob") == "Bob"


def test_an_unknown_user_has_no_name_but_others_are_still_asked(tmp_path, history, monkeypatch):
    answers: dict[str, UserPublic | MessengerError] = {
        "ghost": NotFound("no such user"),
        "bob": UserPublic(username="bob", display_name="Bob"),
    }
    names, calls = names_with(tmp_path, history, monkeypatch, answers)
    assert names("ghost") is None
    assert names("bob") == "Bob"
    assert calls == ["ghost", "bob"]


def test_once_the_server_is_away_it_is_not_asked_again(tmp_path, history, monkeypatch):
    away = ServerUnreachable("cannot reach the server")
    names, calls = names_with(tmp_path, history, monkeypatch, {"bob": away, "carol": away})
    a_year_ago = datetime.now(UTC) - timedelta(days=365)
    with History(history.path, history.owner, clock=lambda: a_year_ago) as then:
        then.remember_display_name("carol", "Carol")  # cached a year ago
    assert history.cached_display_name("carol") is None
    assert names("bob") is None
    assert names("carol") == "Carol"  # the stale name, better than nothing; no second call
    assert calls == ["bob"]
