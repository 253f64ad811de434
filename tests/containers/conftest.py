"""The compose end-to-end tests run only where `docker compose` v2 and an engine work, and
not in a run pinned to the private local node (MESSENGER_TEST_BROKER=local)."""

from __future__ import annotations

import os

import pytest

from tests.containers.compose import compose_v2_missing

_TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def timings() -> dict[str, float]:
    """Durations a test measured, printed at the end of the run (README quotes them)."""
    return _TIMINGS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, seconds in _TIMINGS.items():
        terminalreporter.write_line(f"[timing] {what}: {seconds:.0f} s")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ours = [item for item in items if "tests/containers/" in item.nodeid]
    if not ours:
        return
    if os.environ.get("MESSENGER_TEST_BROKER", "").strip().lower() == "local":
        reason: str | None = "MESSENGER_TEST_BROKER=local: a run on the private node only"
    else:
        reason = compose_v2_missing()
    if reason is not None:
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=f"compose end-to-end: {reason}"))
