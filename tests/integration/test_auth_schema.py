"""The account API's OpenAPI document is true: schemathesis, run against it, finds nothing.

Schemathesis reads /openapi.json of the running auth service (on the session's real broker),
sends what the schema allows and what it forbids, and checks every answer against the schema:
documented status codes, response bodies, headers, and that valid input is accepted and
invalid input refused. Its command line is run as an operator would run it; the one-line
reproduction (`st replay`, a curl line) of anything it finds is in the assertion message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.stack import AuthService

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_schemathesis_finds_nothing_against_the_account_api(auth: AuthService, tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{auth.url}/openapi.json",
            "--max-examples",
            "25",
            "--no-color",
        ],
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
            "PYTHONPATH": str(REPO),
        },
        cwd=tmp_path,  # it keeps a cache directory (.schemathesis/) where it runs
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "7 selected / 7 total" in result.stdout  # every operation was exercised
