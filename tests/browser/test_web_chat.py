"""People chat in real browsers: two of them, a browser and the CLI, across a network cut."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from playwright.sync_api import WebSocketRoute, expect

from tests.browser.web_user import WebUser
from tests.integration.cli_driver import Person
from tests.integration.stack import AuthService, eventually

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "images" / "web-conversation.png"


def test_two_people_chat_both_ways_with_accepted_and_delivered_marks(
    web: Callable[..., WebUser], tmp_path: Path
) -> None:
    alice = web("alice", "Alice Liddell").sign_up()
    bob = web("bob", "Bob Ross", timezone="Asia/Kolkata").sign_up()  # UTC+05:30

    alice.open_conversation(bob.username)
    alice.send("Hi Bob! Lunch at noon?")
    expect(alice.status_of("Lunch at noon")).to_have_text("✓✓")  # ✓, then ✓✓ once stored

    # Bob was looking elsewhere: the conversation appears, newest first, with one unread.
    link = bob.conversation_link("Alice Liddell")
    expect(link).to_contain_text("Hi Bob! Lunch at noon?")
    expect(link.locator(".unread")).to_have_text("1")
    link.click()
    expect(link.locator(".unread")).to_have_count(0)
    message = bob.article("Lunch at noon")
    expect(message).to_contain_text("Alice Liddell")
    # Times are shown in the browser's own zone.
    sent_at = datetime.fromisoformat(message.locator("time").get_attribute("datetime") or "")
    expect(message.locator("time")).to_have_text(
        sent_at.astimezone(ZoneInfo("Asia/Kolkata")).strftime("%H:%M")
    )

    bob.send("Sure!\nThe usual place?")  # Enter sends
    expect(alice.article("The usual place?")).to_contain_text("Bob Ross")
    expect(alice.article("The usual place?").locator(".text")).to_have_text(
        "Sure!\nThe usual place?"
    )
    expect(bob.status_of("The usual place?")).to_have_text("✓✓")

    alice.composer.fill("See you")
    alice.composer.press("Shift+Enter")  # a new line, not a send
    alice.composer.press_sequentially("there")
    expect(alice.composer).to_have_value("See you\nthere")
    alice.page.get_by_role("button", name="Send", exact=True).click()
    expect(bob.article("See you")).to_have_count(1)
    expect(alice.status_of("See you")).to_have_text("✓✓")
    for person in (alice, bob):
        expect(person.articles()).to_have_count(3)

    shot = tmp_path / "conversation.png"
    alice.page.screenshot(path=str(shot))
    if os.environ.get("MESSENGER_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_a_cli_user_and_a_web_user_chat(
    web: Callable[..., WebUser], auth: AuthService, tmp_path: Path
) -> None:
    carol = Person.signed_up(tmp_path, auth, "carol", "Carol CLI")
    dave = web("dave", "Dave Web").sign_up()

    sent = messenger(carol, "send", dave.username, "hello from the terminal")
    assert sent.returncode == 0, sent.stderr
    link = dave.conversation_link("Carol CLI")
    link.click()
    expect(dave.article("hello from the terminal")).to_contain_text("Carol CLI")

    dave.send("hello from the browser")
    expect(dave.status_of("hello from the browser")).to_have_text("✓")

    def carol_got_it() -> list[dict[str, object]]:
        inbox = messenger(carol, "inbox", "--json")
        assert inbox.returncode == 0, inbox.stderr
        return [json.loads(line) for line in inbox.stdout.splitlines()]

    rows = eventually(carol_got_it)
    assert [(r["from"], r["text"]) for r in rows] == [(dave.username, "hello from the browser")]
    # The web client sent a delivered receipt for carol's message; the CLI stored it.
    expect(dave.status_of("hello from the browser")).to_have_text("✓✓")
    history = messenger(carol, "history", dave.username, "--json")
    statuses = {r["text"]: r.get("status") for r in map(json.loads, history.stdout.splitlines())}
    assert statuses["hello from the terminal"] == "delivered"


def test_a_network_cut_loses_nothing_doubles_nothing_and_keeps_what_was_typed(
    web: Callable[..., WebUser],
) -> None:
    erin = web("erin", "Erin").sign_up()
    frank = web("frank", "Frank").sign_up()
    erin.open_conversation(frank.username)
    frank.open_conversation(erin.username)
    erin.send("before the cut")
    expect(frank.article("before the cut")).to_have_count(1)

    erin.context.set_offline(True)
    expect(erin.page.get_by_role("status")).to_contain_text("Offline")
    for n in range(3):
        erin.send(f"written offline {n}")
        frank.send(f"sent while erin is away {n}")
    for n in range(3):
        expect(erin.status_of(f"written offline {n}")).to_have_attribute("title", "sending")
        expect(frank.status_of(f"sent while erin is away {n}")).to_have_text("✓")
    erin.composer.fill("half a thought")
    erin.page.wait_for_timeout(1000)  # a few reconnect attempts fail meanwhile
    expect(erin.article("sent while erin is away")).to_have_count(0)

    erin.context.set_offline(False)
    erin.expect_online()
    for n in range(3):
        expect(erin.status_of(f"written offline {n}")).to_have_text("✓✓")
        expect(frank.status_of(f"sent while erin is away {n}")).to_have_text("✓✓")
    for person in (erin, frank):
        expect(person.articles()).to_have_count(7)  # 1 + 3 + 3, each once
        texts = person.articles().locator(".text").all_inner_texts()
        assert len(texts) == len(set(texts)) == 7, texts
    expect(erin.composer).to_have_value("half a thought")


def test_a_send_whose_broker_receipt_was_lost_is_sent_again_and_shown_once(
    web: Callable[..., WebUser],
) -> None:
    """The connection drops after the broker took a message but before its receipt came
    back: the page publishes it again with the same client id and send time, the relay gives
    it the same id, and the recipient shows it once although it got it twice."""
    grace = web("grace", "Grace").sign_up()
    heidi = web("heidi", "Heidi").sign_up()
    grace.open_conversation(heidi.username)
    heidi.open_conversation(grace.username)

    frames_to_heidi: list[str] = []

    def count_heidi(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def to_page(message: str | bytes) -> None:
            frames_to_heidi.append(str(message))
            ws.send(message)

        server.on_message(to_page)

    heidi.page.route_web_socket("**/ws", count_heidi)
    heidi.page.reload()  # its next connection goes through the counting route
    heidi.expect_online()

    cut = {"done": False}

    def lose_first_receipt(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def to_page(message: str | bytes) -> None:
            if not cut["done"] and str(message).startswith("RECEIPT"):
                cut["done"] = True
                ws.close()  # the receipt never arrives; the page reconnects
                return
            ws.send(message)

        server.on_message(to_page)

    grace.page.route_web_socket("**/ws", lose_first_receipt)
    grace.page.reload()
    grace.expect_online()
    grace.send("sent exactly once")
    expect(grace.status_of("sent exactly once")).to_have_text("✓✓")
    assert cut["done"]

    def copies() -> list[str]:
        return [f for f in frames_to_heidi if f.startswith("MESSAGE") and "sent exactly once" in f]

    eventually(lambda: len(copies()) == 2)  # the relay delivered both publishes...
    ids = {line for f in copies() for line in f.splitlines() if line.startswith("amqp-message-id:")}
    assert len(ids) == 1  # ...under one id
    expect(heidi.article("sent exactly once")).to_have_count(1)  # and heidi shows it once


def test_html_in_a_message_is_shown_as_text(web: Callable[..., WebUser]) -> None:
    ivan = web("ivan", "Ivan").sign_up()
    judy = web("judy", "<b>Judy</b>").sign_up()
    payload = "<img src=x onerror=alert(1)> & <script>alert(2)</script>"
    judy.open_conversation(ivan.username)
    judy.send(payload)
    ivan.conversation_link("<b>Judy</b>").click()
    message = ivan.article("<img src=x")
    expect(message.locator(".text")).to_have_text(payload)
    expect(message).to_contain_text("<b>Judy</b>")
    assert ivan.page.locator("article img, article script, article b").count() == 0
    ivan.page.wait_for_timeout(500)
    assert ivan.dialogs == [] and judy.dialogs == []


def messenger(person: Person, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `messenger` command of this environment, as a shell runs it."""
    command = Path(sys.executable).with_name("messenger")
    return subprocess.run(
        [str(command), *args],
        env=person.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_reload_keeps_the_tab_signed_in_and_log_out_ends_the_device(
    web: Callable[..., WebUser], auth: AuthService
) -> None:
    kim = web("kim", "Kim").sign_up()
    lee = web("lee", "Lee").sign_up()
    kim.open_conversation(lee.username)
    kim.send("still here after a reload")
    expect(kim.status_of("still here after a reload")).to_have_text("✓✓")

    kim.page.reload()
    kim.expect_online()
    expect(kim.article("still here after a reload")).to_have_count(1)
    expect(kim.status_of("still here after a reload")).to_have_text("✓✓")
    token = kim.page.evaluate("JSON.parse(sessionStorage.getItem('messenger.session')).token")
    assert token and token not in kim.page.url

    kim.page.get_by_role("button", name="Log out", exact=True).click()
    expect(kim.page.get_by_role("button", name="Log in", exact=True)).to_be_visible()
    assert kim.page.evaluate("sessionStorage.length") == 0
    revoked = httpx.delete(
        f"{auth.url}/v1/sessions/current", headers={"authorization": f"Bearer {token}"}
    )
    assert revoked.status_code == 401

    kim.log_in()  # a new device: this tab's copy of the conversation left with the old one
    expect(
        kim.page.get_by_role("navigation", name="Conversations").get_by_role("link")
    ).to_have_count(0)


def test_what_breaks_a_rule_is_explained_before_anything_is_sent(
    web: Callable[..., WebUser],
) -> None:
    mia = web("mia", "Mia")
    posts: list[str] = []
    mia.page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    alert = mia.page.get_by_role("alert").first
    mia.page.get_by_label("Username", exact=True).fill("Mia Wallace")
    mia.page.get_by_label("Password", exact=True).fill("long enough")
    mia.page.get_by_label("Display name", exact=True).fill("Mia")
    mia.page.get_by_role("button", name="Sign up", exact=True).click()
    expect(alert).to_have_text("A username is lowercase.")
    mia.page.get_by_label("Username", exact=True).fill("relay")
    mia.page.get_by_role("button", name="Sign up", exact=True).click()
    expect(alert).to_have_text("The username 'relay' is reserved.")
    mia.page.get_by_label("Username", exact=True).fill(mia.username)
    mia.page.get_by_label("Password", exact=True).fill("short")
    mia.page.get_by_role("button", name="Sign up", exact=True).click()
    expect(alert).to_have_text("A password is at least 8 characters long.")
    assert posts == []

    mia.page.get_by_label("Password", exact=True).fill("wrong password")
    mia.page.get_by_role("button", name="Log in", exact=True).click()
    expect(alert).to_have_text("Wrong username or password.")  # the server's answer

    mia.sign_up()
    to = mia.page.get_by_role("textbox", name="To", exact=True)
    to.fill("nobody-by-this-name")
    to.press("Enter")
    expect(mia.page.get_by_role("alert").filter(has_text="no user")).to_have_text(
        "There is no user named 'nobody-by-this-name'."
    )
    mia.open_conversation(mia.username)  # to oneself, why not
    mia.send("   ")
    expect(mia.page.get_by_role("alert").filter(has_text="Write")).to_have_text(
        "Write something first."
    )
    expect(mia.articles()).to_have_count(0)
