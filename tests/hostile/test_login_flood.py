"""A flood of failed broker logins neither locks anybody out nor stops honest logins.

Before: 10 failed broker logins locked the user's password login everywhere for 5 minutes,
and every failed broker login (even for a name nobody has) cost an argon2 verification.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.integration.stack import (
    AuthService,
    Broker,
    close_quietly,
    login_refused,
    signup_and_login,
)

FLOOD = 150  # failed AMQP logins, no account needed for most of them


def test_a_broker_login_flood_leaves_honest_users_and_its_target_logging_in(
    auth: AuthService, broker: Broker
):
    victim = signup_and_login(auth)  # has logged in from here before
    bystander = signup_and_login(auth)
    attempts = [(f"ghost{uuid.uuid4().hex[:10]}", "guess") for _ in range(FLOOD)]
    attempts += [(victim.username, f"guess {n}") for n in range(FLOOD // 3)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda a: login_refused(broker, *a), attempts))
    assert all(results), "a guessed login got in"

    # Honest users carry on: a password login, a token connect.
    response = httpx.post(
        f"{auth.url}/v1/sessions",
        json={"username": bystander.username, "password": bystander.password},
        timeout=30,
    )
    assert response.status_code == 200
    close_quietly(broker.connect(bystander.username, response.json()["token"]))
    # The target is throttled for strangers only: from its own address it logs in, and the
    # session it holds still opens the broker.
    response = httpx.post(
        f"{auth.url}/v1/sessions",
        json={"username": victim.username, "password": victim.password},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    close_quietly(broker.connect(victim.username, victim.token))
