"""The supervisor of `make run`, with real child processes (no broker needed).

A part that exits is started again, one log line per restart with the cause; a part that
keeps failing fast is given up on, which stops the supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest

from deploy.processes import ServiceProcess
from deploy.supervisor import ProcessPart, RestartPolicy, Supervisor
from tests.integration.stack import eventually

QUICK = RestartPolicy(first_delay=0.05, max_delay=0.2, fast_seconds=5.0, give_up_after=3)


def sleeper() -> ServiceProcess:
    """A long-running child: `python -m timeit` of a 60 s sleep."""
    return ServiceProcess("timeit", ["-n", "1", "-r", "1", "import time; time.sleep(60)"], {})


def crasher() -> ServiceProcess:
    """A child that exits at once with status 1 (no such module)."""
    return ServiceProcess("no_such_module_for_the_supervisor_test", [], {})


def supervise(
    *parts: ProcessPart, policy: RestartPolicy = QUICK
) -> tuple[Supervisor, threading.Thread]:
    for part in parts:
        part.start()
    supervisor = Supervisor(list(parts), threading.Event(), policy)
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    return supervisor, thread


def test_a_killed_part_is_started_again_with_one_line_saying_why(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, "messenger.supervisor")
    part = ProcessPart("sleeper", sleeper())
    supervisor, thread = supervise(part)
    try:
        first = part.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        eventually(lambda: part.running and part.pid != first, timeout=10)
        assert supervisor.restarts == {"sleeper": 1}
        (line,) = [r.getMessage() for r in caplog.records]
        assert line.startswith("sleeper exited (killed by SIGKILL) after ")
        assert "restarting it in 0.05 s (restart 1)" in line
        assert supervisor.gave_up is None
    finally:
        supervisor.stop.set()
        thread.join(10)
        part.process.stop()


def test_repeated_fast_failures_are_given_up_on_and_stop_the_supervisor(
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.WARNING, "messenger.supervisor")
    healthy = ProcessPart("sleeper", sleeper())
    failing = ProcessPart("crasher", crasher())
    supervisor, thread = supervise(healthy, failing)
    try:
        thread.join(30)
        assert not thread.is_alive(), "the supervisor did not give up"
        assert supervisor.gave_up is not None
        assert supervisor.gave_up.startswith("crasher failed 3 times in a row")
        assert "exit status 1" in supervisor.gave_up
        assert supervisor.restarts["crasher"] == 2 and supervisor.restarts["sleeper"] == 0
        lines = [r.getMessage() for r in caplog.records]
        assert len([line for line in lines if line.startswith("crasher exited")]) == 2
        assert lines[-1].endswith("giving up")
        assert healthy.running  # stopping the rest is the caller's (deploy/run.py)
    finally:
        healthy.process.stop()


def test_the_delay_doubles_per_fast_failure_up_to_the_cap():
    policy = RestartPolicy(first_delay=0.5, max_delay=10.0)
    assert [policy.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_a_stop_during_the_wait_before_a_restart_starts_nothing():
    part = ProcessPart("crasher", crasher())
    slow = RestartPolicy(first_delay=30.0, max_delay=30.0, give_up_after=5)
    supervisor, thread = supervise(part, policy=slow)
    eventually(lambda: supervisor.restarts["crasher"] == 1, timeout=10)
    started = time.monotonic()
    supervisor.stop.set()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5
    assert not part.running
