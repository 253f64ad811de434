"""One person in a browser context, driving the page by its pinned accessible names."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from playwright.sync_api import BrowserContext, ConsoleMessage, Dialog, Locator, Page, expect

from tests.integration.stack import unique_username


@dataclass
class WebUser:
    context: BrowserContext
    page: Page
    url: str
    username: str
    password: str
    display_name: str
    problems: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    @classmethod
    def open(
        cls, context: BrowserContext, url: str, prefix: str, display_name: str | None
    ) -> WebUser:
        page = context.new_page()
        username = unique_username(prefix)
        user = cls(
            context,
            page,
            url,
            username,
            secrets.token_urlsafe(12),
            display_name or f"Web {username}",
        )
        page.on("console", user._on_console)
        page.on("pageerror", lambda error: user.problems.append(f"page error: {error}"))
        page.on("dialog", user._on_dialog)
        page.goto(f"{url}/")
        return user

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        text, url = message.text, message.location.get("url", "")
        # Expected: a WebSocket cut on purpose (the offline tests), and the API's answers
        # that are part of a test (401 for a wrong password, 404 for an unknown user).
        if "WebSocket" in text or "ERR_INTERNET_DISCONNECTED" in text:
            return
        if text.startswith("Failed to load resource") and "/v1/" in url:
            return
        self.problems.append(f"console error: {text} ({url})")

    def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    # -- signing in --

    def sign_up(self) -> WebUser:
        self.page.get_by_label("Username", exact=True).fill(self.username)
        self.page.get_by_label("Password", exact=True).fill(self.password)
        self.page.get_by_label("Display name", exact=True).fill(self.display_name)
        self.page.get_by_role("button", name="Sign up", exact=True).click()
        self.expect_online()
        return self

    def log_in(self) -> WebUser:
        self.page.get_by_label("Username", exact=True).fill(self.username)
        self.page.get_by_label("Password", exact=True).fill(self.password)
        self.page.get_by_role("button", name="Log in", exact=True).click()
        self.expect_online()
        return self

    def expect_online(self, timeout: float | None = None) -> None:
        expect(self.page.get_by_role("status")).to_have_text("Online", timeout=timeout)

    # -- chatting --

    @property
    def composer(self) -> Locator:
        return self.page.get_by_role("textbox", name="Message", exact=True)

    def open_conversation(self, username: str) -> None:
        to = self.page.get_by_role("textbox", name="To", exact=True)
        to.fill(username)
        to.press("Enter")
        expect(self.page.get_by_role("heading", level=2)).to_contain_text(f"({username})")

    def send(self, text: str) -> None:
        self.composer.fill(text)
        self.composer.press("Enter")

    def articles(self) -> Locator:
        return self.page.get_by_role("article")

    def article(self, text: str) -> Locator:
        return self.articles().filter(has_text=text)

    def conversation_link(self, display_name: str) -> Locator:
        nav = self.page.get_by_role("navigation", name="Conversations")
        return nav.get_by_role("link").filter(has_text=display_name)

    def status_of(self, text: str) -> Locator:
        return self.article(text).locator(".status")
