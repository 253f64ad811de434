"""Render the broker's definitions.json with hashes of this deployment's service passwords.

deploy/rabbitmq/definitions.json carries hashes of the documented *local* defaults
(`relay-dev-password`, `auth-dev-password`, `archive-dev-password`). docker compose runs
this module once before the broker starts (service `broker-init`): it reads that very file,
replaces each service account's hash with a fresh salted hash of the password found in the
environment, and writes the result into a volume that only the broker mounts. Passwords
therefore live in the environment of the running deployment, never in an image or in the repository.

    python -m deploy.compose.render_definitions --output /var/lib/messenger/broker/definitions.json

The broker imports definitions at every boot, so a changed password takes effect with
`docker compose up` (broker-init runs again, then the broker restarts).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.local_broker import CONFIG_DIR, rabbit_password_hash
from protocol.topology import VHOST

logger = logging.getLogger(__name__)

# Service account -> the environment variable that holds its password.
PASSWORD_ENV = {
    "relay": "MESSENGER_RELAY_PASSWORD",
    "auth": "MESSENGER_AUTH_PASSWORD",
    "archive": "MESSENGER_ARCHIVE_PASSWORD",
}
# Set only by the management overlay (deploy/compose/management.yaml).
ADMIN_PASSWORD_ENV = "MESSENGER_BROKER_ADMIN_PASSWORD"
ADMIN_USER = "admin"
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
DEFAULT_TEMPLATE = CONFIG_DIR / "definitions.json"
# The queues of definitions.json (outbox shards, relay.dead, archive.ingest): classic on one
# node, quorum on a cluster (deploy/local_cluster.py, compose's `cluster` profile). Same file,
# another type.
QUEUE_TYPES = ("classic", "quorum")
# Quorum queues give up on a message after `delivery-limit` deliveries (RabbitMQ 4 sets 20
# by default; it then drops or dead-letters it). An outbox message goes back to its shard
# each time a relay's connection is lost while it is unacked, so 20 relay restarts would
# lose an honest message; the relay itself never loops on a poison (it dead-letters it), so
# the limit is only a last guard against a relay bug: 1,000. (-1, "no limit", is refused by
# 3.10; and a policy holding a quorum-only key is not applied to classic queues at all, so
# the classic template has none.)
QUORUM_DELIVERY_LIMIT = 1000
QUORUM_DELIVERY_LIMITED = ("outbox-limit", "dead-letter-limit")


class RenderError(RuntimeError):
    """The definitions cannot be rendered (a password is missing)."""


def render(
    template: Mapping[str, Any],
    passwords: Mapping[str, str],
    admin_password: str | None = None,
) -> dict[str, Any]:
    """A copy of `template` whose service accounts have hashes of `passwords`.

    With `admin_password`, an `admin` account tagged `administrator` is added for the
    management UI; without it, the broker has no account that may log in there.
    """
    definitions = copy.deepcopy(dict(template))
    for user in definitions["users"]:
        password = passwords.get(user["name"])
        if not password:
            variable = PASSWORD_ENV.get(user["name"], "?")
            raise RenderError(f"no password for service account {user['name']!r}: set {variable}")
        user["password_hash"] = rabbit_password_hash(password)
        user["hashing_algorithm"] = HASHING_ALGORITHM
    if admin_password:
        definitions["users"].append(
            {
                "name": ADMIN_USER,
                "password_hash": rabbit_password_hash(admin_password),
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": ["administrator"],
            }
        )
        definitions["permissions"].append(
            {"user": ADMIN_USER, "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"}
        )
    return definitions


def with_queue_type(definitions: Mapping[str, Any], queue_type: str) -> dict[str, Any]:
    """A copy of `definitions` whose queues are all of `queue_type` (`x-queue-type`).

    Our queues use only what both types support (durable, single active consumer,
    dead-lettering), so the type is the one argument that differs between environments.
    """
    if queue_type not in QUEUE_TYPES:
        raise RenderError(f"unknown queue type {queue_type!r} (one of {', '.join(QUEUE_TYPES)})")
    result = copy.deepcopy(dict(definitions))
    for queue in result["queues"]:
        queue["arguments"]["x-queue-type"] = queue_type
    if queue_type == "quorum":
        for policy in result.get("policies", []):
            if policy["name"] in QUORUM_DELIVERY_LIMITED:
                policy["definition"]["delivery-limit"] = QUORUM_DELIVERY_LIMIT
    return result


def passwords_from_env(env: Mapping[str, str]) -> dict[str, str]:
    return {user: env[variable] for user, variable in PASSWORD_ENV.items() if env.get(variable)}


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step, so the broker never reads half a file.

    Mode 0644: the broker runs as its own user (uid 999 in the official image), not as the
    user of this image. The file holds salted hashes, and only the broker mounts its volume.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--queue-type", choices=QUEUE_TYPES, default="classic")
    args = parser.parse_args(argv)
    try:
        template = json.loads(args.template.read_text())
        definitions = render(
            with_queue_type(template, args.queue_type),
            passwords_from_env(os.environ),
            os.environ.get(ADMIN_PASSWORD_ENV) or None,
        )
        write_atomically(args.output, json.dumps(definitions, indent=2) + "\n")
    except (OSError, ValueError, KeyError, RenderError) as exc:
        logger.error("cannot render the broker definitions: %s", exc)
        return 1
    accounts = ", ".join(user["name"] for user in definitions["users"])
    logger.info("wrote %s (accounts: %s; %s queues)", args.output, accounts, args.queue_type)
    return 0


if __name__ == "__main__":
    sys.exit(main())
