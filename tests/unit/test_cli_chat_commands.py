"""Lines typed in `chat`: commands are answered here and never reach the other person."""

from __future__ import annotations

from clients.cli.chat import HELP_LINE, _converse
from clients.cli.output import Painter


class Prompt:
    def __init__(self, *lines: str) -> None:
        self._lines = list(lines)

    def read(self) -> str | None:
        return self._lines.pop(0) if self._lines else None


class Sender:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.offline: list[bool] = []

    def submit(self, text: str, offline: bool = False) -> None:
        self.sent.append(text)
        self.offline.append(offline)


class Screen:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.problems: list[str] = []
        self.paint = Painter(color=False)

    def line(self, text: str) -> None:
        self.lines.append(text)

    def problem(self, message: str, hint: str | None = None) -> None:
        self.problems.append(message)


def converse(*lines: str, offline: bool = False) -> tuple[Sender, Screen]:
    sender, screen = Sender(), Screen()
    _converse(Prompt(*lines), sender, screen, lambda: offline)  # type: ignore[arg-type]
    return sender, screen


def test_a_line_typed_while_offline_is_handed_over_marked_offline():
    sender, _ = converse("typed in the dark", offline=True)
    assert sender.sent == ["typed in the dark"] and sender.offline == [True]


def test_an_unknown_command_is_answered_with_the_commands_and_not_sent():
    sender, screen = converse("hello", "/qiut", "/shrug me", "still here")
    assert sender.sent == ["hello", "still here"]
    assert screen.problems == [
        "no command /qiut; nothing was sent",
        "no command /shrug; nothing was sent",
    ]
    assert screen.lines == [HELP_LINE, HELP_LINE]
    assert "/quit" in HELP_LINE and "/help" in HELP_LINE


def test_quit_leaves_and_help_lists_the_commands():
    sender, screen = converse("/help", "/quit", "never sent")
    assert sender.sent == []
    assert screen.lines == [HELP_LINE] and screen.problems == []


def test_a_double_slash_sends_the_line_with_one_slash():
    sender, _ = converse("//etc/hosts is the file", "  ", "")
    assert sender.sent == ["/etc/hosts is the file"]
