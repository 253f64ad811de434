"""pydantic's validation errors as one readable line, e.g. "username must be lowercase"."""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_PREFIXES = ("Value error, ", "Assertion failed, ")


def describe_error(error: Mapping[str, Any]) -> str:
    loc: Sequence[Any] = error.get("loc", ())
    path = ".".join(str(part) for part in loc if part != "body" and not isinstance(part, int))
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid value"))
    if kind == "json_invalid":
        return "request body is not valid JSON"
    if kind == "value_error":
        # Our checks (protocol.accounts) already name the field: "username must be lowercase".
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        return message
    if not path:
        if kind == "missing":
            return "request body is required"
        if kind in {"model_attributes_type", "dict_type", "model_type"}:
            return "request body must be a JSON object"
        return f"request body: {_lower_first(message)}"
    if kind == "missing":
        return f"{path} is required"
    return f"{path}: {_lower_first(message)}"


def describe_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    lines = list(dict.fromkeys(describe_error(error) for error in errors))
    return "; ".join(lines) or "invalid request"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
