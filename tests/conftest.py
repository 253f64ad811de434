"""Fixtures shared by every test: the one broker of the session, and the services on it.

Which broker: tests/integration/container_broker.py (MESSENGER_TEST_BROKER=local|container|
auto); pytest's header says which one this run uses, and why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.pika_io import coalesce_pika_writes
from tests.integration.container_broker import chosen_broker
from tests.integration.stack import (
    ArchivePlace,
    ArchiveProcess,
    AuthService,
    Broker,
    RelayProcess,
    start_archive,
    start_auth,
    start_broker,
    start_relay,
)

logging.getLogger("pika").setLevel(logging.CRITICAL)
# What every entry point does (the relay, the CLI, the benchmarks): tests use pika as they do.
coalesce_pika_writes()


def pytest_report_header() -> str:
    choice = chosen_broker()
    what = "RabbitMQ in a container" if choice.kind == "container" else "a private local node"
    return f"broker: {what} ({choice.reason})"


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """The session's broker: started once, removed with its data at the end of the run."""
    node = start_broker()
    try:
        yield node
    finally:
        node.remove()


@pytest.fixture(scope="session")
def archive_place() -> ArchivePlace:
    """Where the session's archive listens: the auth service proxies the history API there."""
    return ArchivePlace.fresh()


@pytest.fixture(scope="session")
def auth(
    broker: Broker, archive_place: ArchivePlace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthService]:
    """The auth service of the session's broker (its /broker/* API is what the broker asks)."""
    service = start_auth(broker, tmp_path_factory.mktemp("auth"), **archive_place.auth_env())
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def relay(
    broker: Broker, auth: AuthService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayProcess]:
    """One relay for tests that only need messages to flow, consuming when it is handed out."""
    process = start_relay(broker, tmp_path_factory.mktemp("relay"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def archive(
    broker: Broker,
    auth: AuthService,
    archive_place: ArchivePlace,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ArchiveProcess]:
    """The session's archive (SQLite), consuming archive.ingest, behind the auth service."""
    directory = tmp_path_factory.mktemp("archive")
    process = start_archive(
        broker, archive_place, f"sqlite:///{directory / 'archive.sqlite3'}", directory
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
