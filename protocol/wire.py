"""The base of every body that crosses a process."""

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

# A lone UTF-16 surrogate: JSON can carry one ("\ud800"), UTF-8 cannot encode it, so a string
# holding one breaks whoever encodes it next (a password hash, a log line, a reply).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_no_lone_surrogate(value: Any, what: str = "text") -> Any:
    """`value` (a string, or a list/dict of them) if no string in it holds a lone surrogate."""
    if isinstance(value, str):
        found = _LONE_SURROGATE.search(value)
        if found is not None:
            raise ValueError(f"{what} must not contain the lone surrogate U+{ord(found[0]):04X}")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            check_no_lone_surrogate(item, what)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_no_lone_surrogate(key, what)
            check_no_lone_surrogate(item, what)
    return value


class WireModel(BaseModel):
    """Unknown fields from a newer peer are ignored, not fatal; no string of any field holds
    a lone surrogate (refused as invalid input, never a crash further on)."""

    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _no_lone_surrogates(cls, value: Any, info: ValidationInfo) -> Any:
        return check_no_lone_surrogate(value, (info.field_name or "text").replace("_", " "))
