"""The command's edge, with no server at all: every failure is one line and a known code."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clients.cli.app import build_app
from clients.cli.context import Cli
from clients.cli.edge import FAILED, OK, USAGE, run
from clients.library.state import Paths, StoredSession, save_session
from deploy.local_broker import free_port


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MESSENGER_HOME", str(tmp_path))
    monkeypatch.setenv("MESSENGER_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.delenv("MESSENGER_DEBUG", raising=False)
    return tmp_path


def messenger(
    capsys: pytest.CaptureFixture[str], *args: str, stdin: str = ""
) -> tuple[int, str, str]:
    import sys

    original = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = run(build_app(), list(args))
    finally:
        sys.stdin = original
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(text: str) -> str:
    lines = text.strip("\n").split("\n")
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def logged_in_as(home: Path, *, expires_in: timedelta = timedelta(days=1)) -> None:
    save_session(
        Paths.from_env({"MESSENGER_HOME": str(home)}),
        StoredSession(
            server="http://127.0.0.1:9",
            username="alice",
            token="t",
            expires_at=datetime.now(UTC) + expires_in,
        ),
    )


def test_help_documents_the_exit_codes(home, capsys):
    code, out, _ = messenger(capsys, "--help")
    assert code == OK
    flat = " ".join(out.split())
    for documented in ("0 success", "1 failed", "2 wrong usage", "queued, not yet confirmed"):
        assert documented in flat


def test_exit_codes_are_distinct():
    assert len({OK, FAILED, USAGE}) == 3


@pytest.mark.parametrize(
    "args",
    [["whoami"], ["send", "bob", "hi"], ["inbox"], ["listen"], ["history", "bob"], ["chat", "bob"]],
)
def test_commands_that_need_a_login_say_so(home, capsys, args):
    code, out, err = messenger(capsys, *args)
    assert code == FAILED
    assert one_line(err) == (
        "messenger: you are not logged in — log in with `messenger login USERNAME`"
    )
    assert out == ""


def test_an_expired_session_points_at_login(home, capsys):
    logged_in_as(home, expires_in=timedelta(seconds=-5))
    code, _, err = messenger(capsys, "send", "bob", "hi")
    assert code == FAILED
    assert "expired" in one_line(err) and "messenger login alice" in err


def test_an_unreachable_server_is_named(home, capsys, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = messenger(
        capsys, "--server", url, "login", "alice", "--password-stdin", stdin="password1\n"
    )
    assert code == FAILED
    assert f"cannot reach the server at {url}" in one_line(err)


def test_the_server_of_the_session_is_used_without_server_option(home, capsys, monkeypatch):
    monkeypatch.delenv("MESSENGER_URL")
    logged_in_as(home)
    code, _, err = messenger(capsys, "send", "bob", "hi")
    assert code == FAILED
    assert "http://127.0.0.1:9" in one_line(err)


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["signup", "Alice!", "--password-stdin"], "password1\n", "username must be lowercase"),
        (["signup", "alice", "--password-stdin"], "short\n", "at least 8 characters"),
        (["signup", "alice", "--password-stdin"], "", "no password on stdin"),
        (["login", "alice"], "", "pass --password-stdin"),
        (["send", "no body", "hi"], "", "cannot be a username"),
        (["send", "bob", "   "], "", "text must not be empty"),
        (["send", "bob", "-"], "", "text must not be empty"),
        (["history", "../etc", "--json"], "", "cannot be a username"),
    ],
)
def test_invalid_input_is_refused_before_any_network(home, capsys, args, stdin, says):
    logged_in_as(home)
    code, _, err = messenger(capsys, *args, stdin=stdin)
    assert code == FAILED
    assert says in one_line(err)


@pytest.mark.parametrize(
    "args", [["send", "bob"], ["bogus"], ["inbox", "--nope"], ["history", "bob", "--limit", "zero"]]
)
def test_wrong_usage_is_one_line_and_exit_2(home, capsys, args):
    code, _, err = messenger(capsys, *args)
    assert code == USAGE
    assert "--help" in one_line(err)


def test_a_bug_is_still_one_line_without_traceback(home, capsys, monkeypatch):
    logged_in_as(home)

    def broken(self):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(Cli, "meta", broken)
    code, _, err = messenger(capsys, "inbox")
    assert code == FAILED
    assert "unexpected error (RuntimeError: kaboom)" in one_line(err)


def test_logout_when_logged_out_is_harmless(home, capsys):
    code, out, _ = messenger(capsys, "logout")
    assert (code, out) == (OK, "Not logged in.\n")


def test_logout_forgets_the_session_even_when_the_server_is_away(home, capsys):
    logged_in_as(home)
    code, _, err = messenger(capsys, "logout")
    assert code == FAILED
    assert "could not revoke it" in one_line(err)
    assert not (home / "session.json").exists()


def test_chat_without_a_terminal_says_what_to_use_instead(home, capsys):
    logged_in_as(home)
    code, _, err = messenger(capsys, "chat", "bob")
    assert code == FAILED
    assert "chat needs a terminal" in one_line(err)
