"""The server restarts under open pages: the broker, then the auth service that serves the
page and proxies /ws. The pages say they are offline, come back by themselves, and what was
sent meanwhile arrives once. These tests own their system (they stop parts of it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import people
from tests.browser.web_user import WebUser
from tests.integration.stack import (
    AuthService,
    Broker,
    ServiceProcess,
    start_auth,
    start_broker,
    start_relay,
)

pytestmark = pytest.mark.slow

# The page retries with a doubling delay capped at 15 s (web/src/link.ts): once a part is
# back, the next attempt comes within that cap, and the connection takes a moment more.
BACK_WITHIN_MS = 15_000 + 15_000


@dataclass
class System:
    broker: Broker
    auth: AuthService
    relay: ServiceProcess


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir: Path = tmp_path_factory.mktemp("web-restarts")
    broker = start_broker()
    started: list[ServiceProcess] = []
    try:
        auth = start_auth(broker, workdir)
        started.append(auth)
        relay = start_relay(broker, workdir)
        started.append(relay)
        yield System(broker, auth, relay)
    finally:
        for process in reversed(started):
            process.stop()
        broker.remove()


def offline(user: WebUser) -> None:
    expect(user.page.get_by_role("status")).to_contain_text("Offline")


def test_pages_come_back_after_the_broker_and_the_auth_service_restart(
    browser: Browser, system: System
) -> None:
    with people(browser, system.auth.url) as web:
        olga = web("olga", "Olga").sign_up()
        pete = web("pete", "Pete").sign_up()
        olga.open_conversation(pete.username)
        pete.open_conversation(olga.username)
        olga.send("before the restarts")
        expect(pete.article("before the restarts")).to_have_count(1)

        system.broker.stop()
        offline(olga)
        offline(pete)
        olga.send("written while the broker is down")
        olga.composer.fill("still typing")
        system.broker.start()
        olga.expect_online(BACK_WITHIN_MS)
        pete.expect_online(BACK_WITHIN_MS)
        expect(pete.article("written while the broker is down")).to_have_count(1)
        expect(olga.status_of("written while the broker is down")).to_have_text("✓✓")

        system.auth.stop()  # the page's server and its /ws proxy
        offline(olga)
        system.auth.start()
        system.auth.wait_ready()
        olga.expect_online(BACK_WITHIN_MS)
        pete.expect_online(BACK_WITHIN_MS)
        pete.send("after both restarts")
        expect(olga.article("after both restarts")).to_have_count(1)
        expect(pete.status_of("after both restarts")).to_have_text("✓✓")

        for person in (olga, pete):
            expect(person.articles()).to_have_count(3)
        expect(olga.composer).to_have_value("still typing")
