"""Browser tests: Debian's chromium driven by Playwright against the real system (broker,
relay, auth service serving the page and proxying /ws), through the page a user loads.

No browser is downloaded: Playwright launches /usr/bin/chromium (`.ci/run` installs it).
Each test gets fresh browser contexts (a context is a fresh profile: its own
sessionStorage, cookies and cache), and fails if a page logs an error or a CSP violation.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, expect, sync_playwright

from tests.browser.web_user import WebUser
from tests.integration.stack import AuthService, ServiceProcess
from web import chromium

CHROMIUM = chromium.EXECUTABLE


# Package scope, not session: Playwright's sync API keeps an event loop running in this
# thread while it is open, and later tests call asyncio.run().
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as driver:
        yield driver


# Messages cross a broker, a relay and a proxy: wait for them like a person would.
expect.set_options(timeout=15_000)


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # Playwright gives every launch a fresh, temporary user-data-dir of its own.
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=chromium.ARGS)
    try:
        yield launched
    finally:
        launched.close()


@contextmanager
def people(browser: Browser, url: str) -> Iterator[Callable[..., WebUser]]:
    """A factory of people on the server at `url`, each in a browser context of their own
    (a device); at the end, every page must have run without an error."""
    contexts: list[BrowserContext] = []
    users: list[WebUser] = []

    def new_user(
        prefix: str = "w", display_name: str | None = None, timezone: str = "Europe/London"
    ) -> WebUser:
        context = browser.new_context(
            viewport={"width": 1100, "height": 640}, locale="en-GB", timezone_id=timezone
        )
        context.set_default_timeout(15_000)
        contexts.append(context)
        user = WebUser.open(context, url, prefix, display_name)
        users.append(user)
        return user

    try:
        yield new_user
        for user in users:
            assert not user.problems, f"{user.username}'s page reported: {user.problems}"
    finally:
        for context in contexts:
            context.close()


@pytest.fixture
def web(
    browser: Browser, auth: AuthService, relay: ServiceProcess
) -> Iterator[Callable[..., WebUser]]:
    """People on the session's system (broker, relay, auth service)."""
    with people(browser, auth.url) as new_user:
        yield new_user
