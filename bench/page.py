"""Scenario 7, the web client's page: its weight and time to interactive, first load and
cached, in headless chromium (Debian's, driven by Playwright, as tests/browser/ does).

Baseline, same run and same server: a blank page served by the auth service at `/` exactly as
the real one is (the same code path, headers and cache rules: the service is restarted with
a web directory that holds only an empty index.html). What the page costs is the difference.

- weight: bytes on the wire (response bodies as sent, gzip where the browser took it, plus
  response headers) from navigation to the load event; and the uncompressed size.
- time to interactive: navigation start until the page has wired its controls
  (`performance.mark("messenger-interactive")`, set by web/src/main.ts) and the document is
  parsed (DOMContentLoaded); for the blank page, DOMContentLoaded.
- first load: a fresh browser context each time (empty cache); cached: a second navigation
  in the same context (the page revalidated with its ETag, hashed assets from the cache).
- signed in, to online: a tab with a session reloads until its STOMP link is up (the
  connection through /ws, the broker's login through the auth service, the subscription).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, Page, Request, sync_playwright

from bench.context import Context
from bench.report import Figure, Run, ScenarioResult
from web import chromium

CHROMIUM = chromium.EXECUTABLE
BLANK = "<!doctype html><html lang=en><meta charset=utf-8><title>blank</title></html>\n"
# Targets: the page may cost at most twice a blank page's time to interactive on the same
# server and browser, and weigh at most 50 kB on the wire on a first load.
TTI_TARGET_RATIO = 2.0
WEIGHT_TARGET_KB = 50.0

TTI_SCRIPT = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const mark = performance.getEntriesByName("messenger-interactive")[0];
  return Math.max(nav.domContentLoadedEventEnd, mark ? mark.startTime : 0);
}"""


@dataclass
class Load:
    tti_ms: float
    wire_bytes: int
    body_bytes: int
    requests: int


@dataclass
class Loads:
    first: list[Load] = field(default_factory=list)
    cached: list[Load] = field(default_factory=list)


def _load(page: Page, url: str) -> Load:
    finished: list[Request] = []

    def on_finished(request: Request) -> None:
        finished.append(request)

    page.on("requestfinished", on_finished)
    page.goto(url, wait_until="load")
    tti = float(page.evaluate(TTI_SCRIPT))
    page.remove_listener("requestfinished", on_finished)
    wire = body = 0
    for request in finished:
        sizes = request.sizes()
        wire += sizes["responseBodySize"] + sizes["responseHeadersSize"]
        response = request.response()
        if response is not None and response.status == 200:
            body += len(response.body())
    return Load(tti, wire, body, len(finished))


def _measure(browser: Browser, url: str, rounds: int) -> Loads:
    loads = Loads()
    for _ in range(rounds):
        context = browser.new_context()
        try:
            page = context.new_page()
            loads.first.append(_load(page, url))
            loads.cached.append(_load(page, url))
        finally:
            context.close()
    return loads


def _time_to_online(browser: Browser, url: str, username: str, token: str, rounds: int) -> float:
    """Median ms from navigation start to "Online" for a tab that has a session."""
    session = json.dumps(
        {"username": username, "display_name": "Bench", "token": token,
         "expires_at": "2999-01-01T00:00:00Z"}
    )  # fmt: skip
    times = []
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(url)
        page.evaluate("s => sessionStorage.setItem('messenger.session', s)", session)
        for _ in range(rounds):
            page.goto(url, wait_until="commit")
            page.locator("#connection[data-state=online]").wait_for(timeout=30_000)
            times.append(float(page.evaluate("performance.now()")))
    finally:
        context.close()
    return statistics.median(times)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("page", "7 Web client page: weight and time to interactive")
    stack = ctx.stack
    if not Path(CHROMIUM).is_file():
        result.error = f"{CHROMIUM} is missing (apt-get install chromium)"
        return result
    rounds = ctx.size(5, 15)
    url = f"{stack.auth_url}/"
    with tempfile.TemporaryDirectory(prefix="bench-blank-") as blank_dir:
        (Path(blank_dir) / "assets").mkdir()
        (Path(blank_dir) / "index.html").write_text(BLANK)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=chromium.ARGS)
            try:
                stack.start_auth(MESSENGER_AUTH_WEB_DIR=blank_dir)
                _measure(browser, url, 1)  # warm-up: the server's first requests
                blank = _measure(browser, url, rounds)
                stack.start_auth()
                _measure(browser, url, 1)
                real = _measure(browser, url, rounds)
                person = stack.accounts(1, prefix="web")[0]
                online_ms = _time_to_online(browser, url, person.username, person.token, rounds)
            finally:
                browser.close()
                stack.start_auth()

    for label, loads in (("first load", "first"), ("cached", "cached")):
        page_loads: list[Load] = getattr(real, loads)
        blank_loads: list[Load] = getattr(blank, loads)
        tti = _median([x.tti_ms for x in page_loads])
        blank_tti = _median([x.tti_ms for x in blank_loads])
        wire = _median([float(x.wire_bytes) for x in page_loads])
        blank_wire = _median([float(x.wire_bytes) for x in blank_loads])
        body = _median([float(x.body_bytes) for x in page_loads])
        result.figures += [
            Figure(
                f"time to interactive, {label}",
                tti,
                "ms",
                target=f"≤ {TTI_TARGET_RATIO:.0f}x the blank page",
                met=tti <= TTI_TARGET_RATIO * blank_tti,
                baseline=f"blank page {blank_tti:.1f} ms",
                ratio=tti / blank_tti if blank_tti else None,
            ),
            Figure(
                f"bytes on the wire, {label}",
                wire / 1000,
                "kB",
                target=f"≤ {WEIGHT_TARGET_KB:.0f} kB" if loads == "first" else "",
                met=wire / 1000 <= WEIGHT_TARGET_KB if loads == "first" else None,
                baseline=f"blank page {blank_wire / 1000:.1f} kB"
                + (f"; {body / 1000:.1f} kB unzipped" if loads == "first" else ""),
                ratio=wire / blank_wire if blank_wire else None,
            ),
        ]
        for name, source in (("page", page_loads), ("blank", blank_loads)):
            result.runs.append(
                Run.from_latencies(
                    f"{label}, {name} (TTI)",
                    [x.tti_ms for x in source],
                    seconds=sum(x.tti_ms for x in source) / 1000,
                )
            )
    cached_tti = _median([x.tti_ms for x in real.cached])
    result.figures.append(
        Figure(
            "signed-in reload → Online (STOMP up)",
            online_ms,
            "ms",
            baseline=f"page interactive (cached) {cached_tti:.0f} ms",
            ratio=online_ms / cached_tti if cached_tti else None,
        )
    )
    requests = _median([float(x.requests) for x in real.first])
    result.notes.append(
        f"{rounds} loads each; {requests:.0f} requests on a first load "
        f"(page, script, stylesheet, icon); measured {time.strftime('%H:%M:%S')}"
    )
    return result
