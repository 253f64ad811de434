"""`python -m web.protocol_gen [--check]`: the front end's copy of the wire contract.

Writes web/src/generated/protocol.ts from the pydantic models and constants in protocol/:
TypeScript interfaces from each model's JSON Schema, and the validation rules the CLI
applies (username, display name, password, message text) as constants. Rules that live only
in a validator's code (which Unicode categories a display name may not hold, which control
characters a text may not hold, a username's length range) are found by asking the
validator itself, character by character, so nothing is copied by hand. `--check` exits 1
when the committed file differs from what would be generated (tests/unit/test_web_protocol.py
runs the same comparison).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from protocol import PROTOCOL_VERSION, topology
from protocol.accounts import (
    DISPLAY_NAME_MAX,
    PASSWORD_MAX,
    PASSWORD_MIN,
    RESERVED_USERNAMES,
    USERNAME_RE,
    LoginRequest,
    Meta,
    Session,
    SignupRequest,
    UserPublic,
    check_display_name,
    check_username,
)
from protocol.ids import RANDOM_BITS
from protocol.messages import (
    MAX_BODY_BYTES,
    MAX_TEXT_CHARS,
    PROTOCOL_HEADER,
    SENT_MS_HEADER,
    DeliveredMessage,
    ReceiptNotice,
    ReceiptRequest,
    RelayAnswer,
    SendRequest,
    check_text,
)

OUTPUT = Path(__file__).resolve().parent / "src" / "generated" / "protocol.ts"

MODELS: tuple[type[BaseModel], ...] = (
    SignupRequest,
    LoginRequest,
    Session,
    UserPublic,
    Meta,
    SendRequest,
    DeliveredMessage,
    RelayAnswer,
    ReceiptRequest,
    ReceiptNotice,
)

# Every Unicode general category, in the order unicodedata names them.
CATEGORIES = [
    "Lu",
    "Ll",
    "Lt",
    "Lm",
    "Lo",
    "Mn",
    "Mc",
    "Me",
    "Nd",
    "Nl",
    "No",
    "Pc",
    "Pd",
    "Ps",
    "Pe",
    "Po",
    "Pi",
    "Pf",
    "Sm",
    "Sc",
    "Sk",
    "So",
    "Zs",
    "Zl",
    "Zp",
    "Cc",
    "Cf",
    "Cs",
    "Co",
    "Cn",
]


def _rejects(check: Callable[[str], object], value: str) -> bool:
    try:
        check(value)
    except ValueError:
        return True
    return False


def forbidden_display_name_categories() -> list[str]:
    """The general categories whose characters `check_display_name` refuses, found by
    trying one character of each category inside an otherwise valid name."""
    samples: dict[str, str] = {}
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        samples.setdefault(category, chr(code))
        if len(samples) == len(CATEGORIES):
            break
    return [
        c for c in CATEGORIES if c in samples and _rejects(check_display_name, f"a{samples[c]}b")
    ]


def forbidden_text_ranges() -> list[tuple[int, int]]:
    """The code points `check_text` refuses inside a text, as inclusive ranges."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x10000):  # the rule is about control characters, all in the BMP
        if 0xD800 <= code <= 0xDFFF:
            continue
        if _rejects(check_text, f"a{chr(code)}b"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return ranges


def username_lengths() -> tuple[int, int]:
    """The shortest and longest legal username, asked of `check_username`."""
    legal = [n for n in range(1, 300) if not _rejects(check_username, "a" * n)]
    return min(legal), max(legal)


def _ts_type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " | ".join(_ts_type(option) for option in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type")
    if kind == "array":
        return f"{_ts_type(schema.get('items', {}))}[]"
    return {"string": "string", "integer": "number", "number": "number", "boolean": "boolean",
            "null": "null"}.get(str(kind), "unknown")  # fmt: skip


def interface(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", []))
    lines = [f"/** protocol: {model.__module__}.{model.__name__} */"]
    lines.append(f"export interface {model.__name__} {{")
    for name, field_schema in schema["properties"].items():
        optional = "" if name in required else "?"
        lines.append(f"  {name}{optional}: {_ts_type(field_schema)};")
    lines.append("}")
    return "\n".join(lines)


def _const(name: str, value: object) -> str:
    return f"export const {name} = {json.dumps(value, ensure_ascii=True)} as const;"


def _char_class(ranges: Iterable[tuple[int, int]]) -> str:
    parts = []
    for low, high in ranges:
        parts.append(f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}")
    return "[" + "".join(parts) + "]"


def render() -> str:
    shortest, longest = username_lengths()
    constants = [
        _const("PROTOCOL_VERSION", PROTOCOL_VERSION),
        _const("VHOST", topology.VHOST),
        _const("OUTBOX_EXCHANGE", topology.OUTBOX_EXCHANGE),
        _const("INBOX_PREFIX", topology.INBOX_PREFIX),
        _const("CONTENT_TYPE", topology.CONTENT_TYPE),
        _const("TYPE_SEND", topology.TYPE_SEND),
        _const("TYPE_RECEIPT", topology.TYPE_RECEIPT),
        _const("TYPE_ANSWER", topology.TYPE_ANSWER),
        _const("TYPE_MESSAGE", topology.TYPE_MESSAGE),
        _const("TYPE_RECEIPT_NOTICE", topology.TYPE_RECEIPT_NOTICE),
        _const("PROTOCOL_HEADER", PROTOCOL_HEADER),
        _const("SENT_MS_HEADER", SENT_MS_HEADER),
        _const("MAX_BODY_BYTES", MAX_BODY_BYTES),
        _const("MAX_TEXT_CHARS", MAX_TEXT_CHARS),
        _const("USERNAME_PATTERN", USERNAME_RE.pattern),
        _const("USERNAME_MIN", shortest),
        _const("USERNAME_MAX", longest),
        _const("RESERVED_USERNAMES", sorted(RESERVED_USERNAMES)),
        _const("DISPLAY_NAME_MAX", DISPLAY_NAME_MAX),
        _const("DISPLAY_NAME_FORBIDDEN_CATEGORIES", forbidden_display_name_categories()),
        _const("PASSWORD_MIN", PASSWORD_MIN),
        _const("PASSWORD_MAX", PASSWORD_MAX),
        _const("TEXT_FORBIDDEN_CLASS", _char_class(forbidden_text_ranges())),
        _const("STABLE_ID_RANDOM_BITS", RANDOM_BITS),
    ]
    header = (
        "// Generated by `python -m web.protocol_gen` from the pydantic models and constants in\n"
        "// protocol/. Do not edit: run `make web` (tests/unit/test_web_protocol.py fails when\n"
        "// this file is stale).\n"
    )
    return (
        header + "\n" + "\n".join(constants) + "\n\n" + "\n\n".join(map(interface, MODELS)) + "\n"
    )


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            sys.stderr.write(f"{OUTPUT} is stale: run `python -m web.protocol_gen`\n")
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
