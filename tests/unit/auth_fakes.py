"""A stand-in for the auth service's broker queues, shared by the account and HTTP unit tests."""

from __future__ import annotations

from protocol.topology import device_queue
from services.auth.errors import BrokerUnavailable


class FakeInboxes:
    """Records what the auth service asks of the broker; `down` makes every call fail as a
    broker outage would."""

    def __init__(self) -> None:
        self.declared: list[str] = []
        self.devices: list[str] = []
        self.deleted: list[str] = []
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise BrokerUnavailable("down")

    def declare(self, username: str) -> None:
        self._check()
        self.declared.append(username)

    def declare_device(self, username: str, device_id: str) -> str:
        self._check()
        queue = device_queue(username, device_id)
        self.devices.append(queue)
        return queue

    def delete_device(self, queue: str) -> None:
        self._check()
        self.deleted.append(queue)

    def delete_user(self, username: str) -> None:
        self._check()
