"""What reaches the terminal: colour rules, safe text, names, local times."""

from __future__ import annotations

import io
import unicodedata
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.cli.output import Painter, clean, local_time, message_line, person, wants_color
from clients.library.history import Status, StoredMessage


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color():
    assert wants_color(Tty(), {"TERM": "xterm"})
    assert not wants_color(io.StringIO(), {"TERM": "xterm"})
    assert not wants_color(Tty(), {"TERM": "xterm", "NO_COLOR": "1"})
    assert not wants_color(Tty(), {"TERM": "dumb"})


def test_a_painter_without_colour_leaves_text_alone():
    assert Painter(False)("x", "bold", "red") == "x"
    assert Painter(True)("x", "bold", "red") == "\x1b[1;31mx\x1b[0m"


def test_escape_sequences_from_other_people_never_reach_the_terminal():
    assert clean("hi\x1b[2Jthere\nnext\tcol\u202e") == "hi\ufffd[2Jthere\nnext\tcol\ufffd"
    assert clean("c1\x9b2J bell\x07") == "c1\ufffd2J bell\ufffd"


@pytest.mark.parametrize(
    "text",
    [
        "\U0001f469\u200d\U0001f4bb",  # woman technologist: ZWJ
        "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag: variation selector and ZWJ
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian with ZWNJ
        "a \u202bquoted\u202c b \u2067isolated\u2069",  # balanced bidi controls
        "\U0001f44d\U0001f3fd soft\u00adhyphen",  # skin tone, soft hyphen
    ],
)
def test_what_scripts_and_emoji_need_is_kept(text):
    assert clean(text) == text


def test_unbalanced_bidi_controls_are_replaced_per_line():
    assert clean("\u202eevil\nnext\u202c") == "\ufffdevil\nnext\ufffd"
    assert clean("\u2067a\u202c\u2069") == "\u2067a\ufffd\u2069"


def test_names_show_the_display_name_next_to_the_username():
    assert person("bob", "Bob Marley") == "Bob Marley (bob)"
    assert person("bob", None) == "bob"
    assert person("bob", "bob") == "bob"


def test_times_are_local_and_short_for_today():
    now = datetime.now(UTC)
    assert local_time(now) == now.astimezone().strftime("%H:%M")
    long_ago = now - timedelta(days=400)
    assert local_time(long_ago) == long_ago.astimezone().strftime("%Y-%m-%d %H:%M")


def stored(sender: str, text: str, status: Status = "received") -> StoredMessage:
    return StoredMessage(
        id="m1",
        client_id=None,
        sender=sender,
        recipient="x",
        text=text,
        sent_at=datetime.now(UTC),
        status=status,
        shown=False,
    )


def test_a_message_line_has_time_name_text_and_the_status_of_mine():
    names = {"bob": "Bob Marley", "alice": "Alice"}.get
    line = message_line(stored("bob", "hello"), me="alice", names=names, paint=Painter(False))
    assert line.endswith("] Bob Marley (bob): hello")
    mine = message_line(
        stored("alice", "yo", "delivered"), me="alice", names=names, paint=Painter(False)
    )
    assert mine.endswith("Alice (alice): yo  ✓✓ delivered")


def test_continuation_lines_are_indented():
    line = message_line(
        stored("bob", "one\ntwo"), me="alice", names=lambda _: None, paint=Painter(False)
    )
    first, second = line.split("\n")
    assert first.endswith("bob: one")
    assert second.strip() == "two" and second.startswith(" ")


_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(), st.sampled_from(_BIDI + "\x1b\x85\u200d"))))
def test_cleaned_text_holds_no_control_and_no_open_bidi_and_keeps_the_rest(text):
    shown = clean(text)
    assert len(shown) == len(text)  # replaced one for one, never dropped or added
    for line in shown.split("\n"):
        assert not any(unicodedata.category(c) == "Cc" and c != "\t" for c in line)
        depth: list[str] = []
        for char in line:
            if char in "\u202a\u202b\u202d\u202e":
                depth.append("\u202c")
            elif char in "\u2066\u2067\u2068":
                depth.append("\u2069")
            elif char in "\u202c\u2069":
                assert depth and depth.pop() == char
        assert not depth
    kept = [a == b for a, b in zip(text, shown, strict=True)]
    for original, out, same in zip(text, shown, kept, strict=True):
        if not same:
            assert out == "\ufffd"
            assert unicodedata.category(original) == "Cc" or original in _BIDI
    assert clean(shown) == shown
