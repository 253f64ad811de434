"""How the `messenger` command writes to a terminal: names, times, colour, JSON lines.

Colour only when the stream is a terminal, `NO_COLOR` is unset (https://no-color.org) and
`TERM` is not `dumb`. Times are shown in the local time zone. Text from other people loses
control characters and unbalanced bidi controls before it reaches the terminal (`clean`), and
keeps everything a script or an emoji needs (joiners, variation selectors).
"""

from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from rich.cells import cell_len

from clients.library.history import StoredMessage

_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STATUS_MARK = {"queued": "…", "sent": "✓", "delivered": "✓✓", "received": ""}


def wants_color(stream: IO[str], environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if "NO_COLOR" in env and env["NO_COLOR"] != "":
        return False
    if env.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass(frozen=True)
class Painter:
    """Wraps text in ANSI styles when colour is on, and returns it untouched otherwise."""

    color: bool

    def __call__(self, text: str, *styles: str) -> str:
        if not self.color or not styles:
            return text
        codes = ";".join(_CODES[style] for style in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    @classmethod
    def for_stream(cls, stream: IO[str]) -> Painter:
        return cls(wants_color(stream))


# Bidi embeddings/overrides end at PDF, isolates at PDI. One left open runs on into what the
# terminal prints next (our own prompt, a name), so only matched pairs are kept.
_BIDI_OPENERS = {
    "\u202a": "\u202c", "\u202b": "\u202c", "\u202d": "\u202c", "\u202e": "\u202c",
    "\u2066": "\u2069", "\u2067": "\u2069", "\u2068": "\u2069",
}  # fmt: skip
_BIDI_CLOSERS = frozenset(_BIDI_OPENERS.values())


def clean(text: str) -> str:
    """Text safe to print: C0/C1 control characters (escape sequences among them) but newline
    and tab, and bidi controls left unbalanced within a line, become U+FFFD. Everything else
    is kept: emoji joined by ZWJ (👩‍💻), variation selectors (🏳️‍🌈), ZWNJ in Persian."""
    return "\n".join(_clean_line(line) for line in text.split("\n"))


def _clean_line(line: str) -> str:
    chars = [
        char if char == "\t" or unicodedata.category(char) != "Cc" else "\N{REPLACEMENT CHARACTER}"
        for char in line
    ]
    open_at: list[int] = []  # positions of bidi openers not closed yet
    for index, char in enumerate(chars):
        if char in _BIDI_OPENERS:
            open_at.append(index)
        elif char in _BIDI_CLOSERS:
            if open_at and _BIDI_OPENERS[chars[open_at[-1]]] == char:
                open_at.pop()
            else:
                chars[index] = "\N{REPLACEMENT CHARACTER}"
    for index in open_at:
        chars[index] = "\N{REPLACEMENT CHARACTER}"
    return "".join(chars)


def local_time(moment: datetime, *, now: datetime | None = None) -> str:
    """`14:03` for today, `Mon 24 Nov 14:03` within a week-ish, `2025-11-24 14:03` otherwise."""
    local = moment.astimezone()
    today = (now or datetime.now().astimezone()).astimezone().date()
    if local.date() == today:
        return local.strftime("%H:%M")
    if abs((today - local.date()).days) < 7:
        return local.strftime("%a %d %b %H:%M")
    return local.strftime("%Y-%m-%d %H:%M")


def person(username: str, display_name: str | None) -> str:
    """`Alice Liddell (alice)`, or just `alice` when the display name is unknown or the same."""
    if display_name and display_name != username:
        return f"{clean(display_name)} ({username})"
    return username


NameLookup = Callable[[str], str | None]


def message_line(
    message: StoredMessage,
    *,
    me: str,
    names: NameLookup,
    paint: Painter,
    show_recipient: bool = False,
    show_status: bool = True,
) -> str:
    """One message for a person: `[14:03] Alice Liddell (alice): hello`.

    A message of several lines keeps its continuation lines indented under the text.
    """
    stamp = paint(f"[{local_time(message.sent_at)}]", "dim")
    mine = message.sender == me
    who = paint(person(message.sender, names(message.sender)), "bold", "green" if mine else "cyan")
    if show_recipient:
        who += " → " + paint(person(message.recipient, names(message.recipient)), "bold")
    head = f"{stamp} {who}: "
    visible_head = len(f"[{local_time(message.sent_at)}] ") + 2 + _visible_len(who, paint)
    lines = clean(message.text).split("\n")
    body = ("\n" + " " * min(visible_head, 24)).join(lines)
    line = head + body
    if mine and show_status:
        line += "  " + status_mark(message.status, paint)
    return line


def status_mark(status: str, paint: Painter) -> str:
    mark = _STATUS_MARK.get(status, "")
    if status == "delivered":
        return paint(f"{mark} delivered", "green")
    if status == "queued":
        return paint(f"{mark} queued", "yellow")
    return paint(f"{mark} {status}", "dim")


def _visible_len(text: str, paint: Painter) -> int:
    """Terminal cells (an emoji or a CJK character takes two), escape codes not counted."""
    return cell_len(_ANSI.sub("", text) if paint.color else text)


def json_line(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def out(line: str = "") -> None:
    """A line on stdout, flushed at once (the reader may be a pipe or a test)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
