"""`make run` keeps its parts running: a part that exits is started again, with backoff.

One watcher thread per part (broker node, auth service, each relay), so a broker node that
takes seconds to boot again does not hold up the restart of a relay. Each restart is one log
line that says which part, why it ended (exit status, signal, or the node's own last words)
and when it starts again. A part that keeps failing fast (it ran less than `fast_seconds`,
`give_up_after` times in a row) is given up on: the supervisor stops, and `make run` stops
everything and exits non-zero, rather than spinning on a fault a restart cannot mend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from deploy.local_broker import BrokerError, LocalNode
from deploy.processes import ServiceProcess

logger = logging.getLogger("messenger.supervisor")


class Part(Protocol):
    """Something the supervisor keeps running."""

    name: str

    def start(self) -> None:
        """Start it; return once it runs (a broker node: once it takes logins)."""

    @property
    def running(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    def exit_cause(self) -> str:
        """Why it is no longer running, in a few words."""


@dataclass
class ProcessPart:
    """A service run as a child process (auth service, relay)."""

    name: str
    process: ServiceProcess

    def start(self) -> None:
        self.process.start()

    @property
    def running(self) -> bool:
        return self.process.alive

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def exit_cause(self) -> str:
        return self.process.exit_cause()


@dataclass
class NodePart:
    """A private RabbitMQ node; a restart boots it on the same data, name and ports."""

    name: str
    node: LocalNode

    def start(self) -> None:
        self.node.start()

    @property
    def running(self) -> bool:
        return self.node.running

    @property
    def pid(self) -> int | None:
        return self.node.pid

    def exit_cause(self) -> str:
        return self.node.exit_cause()


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 0.5  # seconds before the first restart, doubled per fast failure
    max_delay: float = 10.0
    fast_seconds: float = 10.0  # ran shorter than this: a fast failure
    give_up_after: int = 5  # fast failures in a row

    def delay(self, fast_failures: int) -> float:
        """Wait before restart number `fast_failures` of a run of fast failures (1-based)."""
        return float(min(self.max_delay, self.first_delay * 2 ** max(0, fast_failures - 1)))


@dataclass
class Supervisor:
    """Watches parts that are already running; `run()` returns when told to stop or on giving up."""

    parts: Sequence[Part]
    stop: threading.Event
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    on_restart: Callable[[], None] = lambda: None
    restarts: dict[str, int] = field(default_factory=dict)
    gave_up: str | None = None  # why, once it gave up
    _threads: list[threading.Thread] = field(default_factory=list)

    def run(self) -> None:
        """Watch every part until `stop` is set (by a signal, or by giving up)."""
        for part in self.parts:
            self.restarts.setdefault(part.name, 0)
            thread = threading.Thread(target=self._watch, args=(part,), name=f"watch {part.name}")
            thread.start()
            self._threads.append(thread)
        try:
            self.stop.wait()
        finally:
            self.stop.set()
            for thread in self._threads:
                thread.join()

    def _watch(self, part: Part) -> None:
        started = time.monotonic()
        fast_failures = 0
        start_error: str | None = None
        while not self.stop.is_set():
            if start_error is None:
                while part.running:
                    if self.stop.wait(0.2):
                        return
                if self.stop.is_set():
                    return
                cause = part.exit_cause()
            else:
                cause = start_error
            ran = time.monotonic() - started
            fast_failures = fast_failures + 1 if ran < self.policy.fast_seconds else 1
            if fast_failures >= self.policy.give_up_after:
                self.gave_up = (
                    f"{part.name} failed {fast_failures} times in a row, each time within "
                    f"{self.policy.fast_seconds:g} s (last: {cause})"
                )
                logger.error("%s; giving up", self.gave_up)
                self.stop.set()
                return
            delay = self.policy.delay(fast_failures)
            self.restarts[part.name] += 1
            if start_error is None:
                logger.warning(
                    "%s exited (%s) after %s; restarting it in %g s (restart %d)",
                    part.name,
                    cause,
                    _duration(ran),
                    delay,
                    self.restarts[part.name],
                )
            else:
                logger.warning(
                    "%s did not start again (%s); trying again in %g s (restart %d)",
                    part.name,
                    cause,
                    delay,
                    self.restarts[part.name],
                )
            if self.stop.wait(delay):
                return
            start_error = None
            try:
                part.start()
            except (BrokerError, OSError, RuntimeError) as exc:
                if self.stop.is_set():
                    return
                start_error = str(exc)
            started = time.monotonic()
            if start_error is None:
                self.on_restart()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
