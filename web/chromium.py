"""Debian's chromium, headless, as the browser tests and the page benchmark launch it.

Never a downloaded browser: Playwright drives the installed /usr/bin/chromium (`.ci/run`
installs it) over CDP. Every launch gets a fresh, temporary profile of Playwright's own.
"""

import os

EXECUTABLE = os.environ.get("MESSENGER_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
