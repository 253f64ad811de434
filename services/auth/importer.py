"""`messenger-auth import` / `export`: users to and from a JSON file.

The format (UTF-8 JSON):

    {"users": [
        {"username": "alice", "display_name": "Alice", "password": "a plaintext password"},
        {"username": "bob", "display_name": "Bob", "password_hash": "$argon2id$v=19$m=...$..."}
    ]}

Each entry has exactly one of `password` (hashed on import, never stored as given) and
`password_hash` (an argon2 hash string, as `export` writes; upgraded to the current
parameters at the user's next login). Every entry is validated with the sign-up rules;
valid ones are imported, the rest reported with the reason. Importing is idempotent: a user
already present is left as it is (its inbox is declared again, which changes nothing).
Every imported user gets an inbox, so it can log in, receive and send at once.

`export` writes the same format with `password_hash` only; a plaintext password is never
written, because none is ever stored.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from protocol.accounts import DisplayName, Password, Username
from services.auth.errors import BrokerLoginRefused, BrokerUnavailable
from services.auth.hashing import PasswordHashing, check_argon2_hash
from services.auth.inboxes import Anchors
from services.auth.store import Store, UserRecord
from services.auth.validation import describe_errors

logger = logging.getLogger(__name__)


class ImportFileError(ValueError):
    """The file as a whole is unusable (not JSON, no `users` list)."""


class ImportedUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    display_name: DisplayName
    password: Password | None = None
    password_hash: str | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> ImportedUser:
        if (self.password is None) == (self.password_hash is None):
            raise ValueError("give exactly one of password and password_hash")
        if self.password_hash is not None:
            check_argon2_hash(self.password_hash)
        return self


class Outcome(enum.Enum):
    CREATED = "created"
    PRESENT = "present"
    INVALID = "invalid"
    FAILED = "failed"


@dataclass(frozen=True)
class EntryResult:
    index: int  # 1-based position in the file
    username: str | None
    outcome: Outcome
    reason: str = ""

    def line(self) -> str:
        who = self.username if self.username is not None else "?"
        text = f"{self.outcome.value:8} #{self.index} {who}"
        return f"{text}: {self.reason}" if self.reason else text


def parse_file(text: str) -> list[Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFileError(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("users"), list):
        raise ImportFileError('expected a JSON object with a "users" list')
    users: list[Any] = document["users"]
    return users


def import_users(
    entries: list[Any], store: Store, hashing: PasswordHashing, inboxes: Anchors
) -> list[EntryResult]:
    """Import every valid entry; stop at the first broker failure (reported as FAILED)."""
    results: list[EntryResult] = []
    for index, raw in enumerate(entries, start=1):
        name = raw.get("username") if isinstance(raw, dict) else None
        shown = name if isinstance(name, str) else None
        try:
            entry = ImportedUser.model_validate(raw)
        except ValidationError as exc:
            reason = describe_errors(exc.errors())
            results.append(EntryResult(index, shown, Outcome.INVALID, reason))
            continue
        try:
            results.append(_import_one(index, entry, store, hashing, inboxes))
        except BrokerLoginRefused:
            reason = "the broker refused the login of the auth service account"
            results.append(EntryResult(index, shown, Outcome.FAILED, reason))
            break
        except BrokerUnavailable:
            results.append(EntryResult(index, shown, Outcome.FAILED, "the broker is unreachable"))
            break
    return results


def _import_one(
    index: int, entry: ImportedUser, store: Store, hashing: PasswordHashing, inboxes: Anchors
) -> EntryResult:
    present = store.get_user(entry.username) is not None
    inboxes.declare(entry.username)  # also for users present: repairs a missing inbox
    if present:
        return EntryResult(index, entry.username, Outcome.PRESENT)
    password_hash = entry.password_hash or hashing.hash(entry.password or "")
    created = store.add_user(
        UserRecord(entry.username, entry.display_name, password_hash, time.time())
    )
    if not created:
        return EntryResult(index, entry.username, Outcome.PRESENT)
    logger.info("imported %s", entry.username)
    return EntryResult(index, entry.username, Outcome.CREATED)


def export_users(store: Store) -> dict[str, list[dict[str, str]]]:
    return {
        "users": [
            {
                "username": user.username,
                "display_name": user.display_name,
                "password_hash": user.password_hash,
            }
            for user in store.all_users()
        ]
    }
