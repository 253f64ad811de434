"""Scenario 5, online users: N users connected at once while 20 pairs exchange messages.

Measured: the broker's, the auth service's and the relay's memory with the crowd online;
how fast connections are set up through the HTTP auth backend (first logins with the cache
cold, a reconnect storm with it warm, and the same storm with the cache switched off at run
time); and the 20 pairs' latency with the crowd online, against the same traffic before
the crowd arrived (the baseline).

The crowd's users are created with cheap argon2 parameters (the auth service restarted for
it, then restarted with production settings before anything is measured): their hash cost
is scenario 6's subject, and a thousand production hashes would take minutes here.
"""

from __future__ import annotations

import threading
from typing import Any

from bench.context import Context
from bench.crowd import CrowdProcess
from bench.fleet import FleetResult, ReceivePlan, SendPlan, pairs, run_fleet
from bench.hop import Endpoint
from bench.report import Figure, Run, ScenarioResult
from protocol.topology import VHOST

PAIRS = 20
PAIR_RATE = 500  # messages/s from the 20 pairs together
RSS_TARGET_MB = 150.0
CHEAP_ARGON2 = {
    "MESSENGER_AUTH_ARGON2_TIME_COST": "1",
    "MESSENGER_AUTH_ARGON2_MEMORY_KIB": "8192",
    "MESSENGER_AUTH_ARGON2_PARALLELISM": "1",
}
UNCACHED = "[rabbit_auth_backend_internal,rabbit_auth_backend_http]"


class _Peaks:
    """Peak RSS of the broker, the auth service and the relay while it runs."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.peak = {"broker": 0.0, "auth": 0.0, "relay": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        stack = self.ctx.stack
        while not self._stop.wait(0.25):
            now = {
                "broker": stack.broker_rss_mb(),
                "auth": stack.auth_rss_mb(),
                "relay": stack.relay_rss_mb(),
            }
            for key, value in now.items():
                if value == value:  # not NaN
                    self.peak[key] = max(self.peak[key], value)

    def __enter__(self) -> _Peaks:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _pairs_run(ctx: Context, meta: str, label: str, seconds: int) -> tuple[Run, FleetResult]:
    people = ctx.people(2 * PAIRS)
    per_sender = max(1, PAIR_RATE * seconds // PAIRS)
    fleet = run_fleet(
        meta,
        [SendPlan(s, r.username, per_sender, rate=PAIR_RATE / PAIRS) for s, r in pairs(people)],
        [ReceivePlan(r, per_sender) for _, r in pairs(people)],
        processes=2,
    )
    run = Run.from_latencies(
        label, fleet.latencies_ms, fleet.seconds, offered_per_s=float(PAIR_RATE)
    )
    return run, fleet


def _set_backends(ctx: Context, backends: str) -> None:
    ctx.stack.eval(f"application:set_env(rabbit, auth_backends, {backends}).")


def _connect_run(label: str, answer: dict[str, Any]) -> Run:
    return Run.from_latencies(label, answer["times_ms"], answer["seconds"])


def run(ctx: Context) -> ScenarioResult:
    users = ctx.size(200, 1_000)
    result = ScenarioResult("online", f"5 Online users: {users:,} connected + {PAIRS} pairs")
    stack = ctx.stack
    meta = stack.meta_json()
    seconds = ctx.size(2, 6)
    ctx.people(2 * PAIRS)  # created with production hashes before the cheap restart

    stack.start_auth(**CHEAP_ARGON2)
    crowd_accounts = stack.accounts(users, prefix="c", workers=8)
    stack.start_auth()  # production settings again, for everything measured
    stack.start_relays(1)
    before = {
        "broker": stack.broker_rss_mb(),
        "auth": stack.auth_rss_mb(),
        "relay": stack.relay_rss_mb(),
    }
    quiet, _ = _pairs_run(ctx, meta, f"{PAIRS} pairs, nobody else online", seconds)

    node = stack.node
    endpoints = [
        Endpoint(node.host, node.amqp_port, VHOST, a.username, a.token) for a in crowd_accounts
    ]
    crowd = CrowdProcess(endpoints)
    try:
        backends = stack.eval("application:get_env(rabbit, auth_backends).")
        configured = backends.removeprefix("{ok,").removesuffix("}")  # e.g. [internal, cache]
        cold = _connect_run("connect, cache cold", crowd.connect())
        with _Peaks(ctx) as peaks:
            busy, fleet = _pairs_run(ctx, meta, f"{PAIRS} pairs, {users:,} online", seconds)
        crowd.disconnect()
        warm = _connect_run("reconnect, cache warm", crowd.connect())
        crowd.disconnect()
        _set_backends(ctx, UNCACHED)
        try:
            uncached = _connect_run("reconnect, no cache", crowd.connect())
        finally:
            _set_backends(ctx, configured)
    finally:
        crowd.close()
    stack.stop_relays()

    result.runs += [quiet, busy, cold, warm, uncached]
    per_conn_kb = (peaks.peak["broker"] - before["broker"]) * 1000 / users
    result.figures += [
        Figure(
            "relay RSS (peak)",
            peaks.peak["relay"],
            "MB",
            target=f"< {RSS_TARGET_MB:.0f} MB",
            met=peaks.peak["relay"] < RSS_TARGET_MB,
            baseline=f"before the crowd {before['relay']:.0f} MB",
        ),
        Figure(
            "auth RSS (peak)",
            peaks.peak["auth"],
            "MB",
            target=f"< {RSS_TARGET_MB:.0f} MB",
            met=peaks.peak["auth"] < RSS_TARGET_MB,
            baseline=f"before the crowd {before['auth']:.0f} MB",
        ),
        Figure(
            "broker RSS (peak)",
            peaks.peak["broker"],
            "MB",
            baseline=f"before {before['broker']:.0f} MB; ≈{per_conn_kb:.0f} kB per user",
        ),
        Figure(
            "connect, cache cold (first login)",
            cold.rate,
            "conn/s",
            baseline=f"p99 set-up {cold.latency_ms['p99']:.0f} ms",
        ),
        Figure(
            "reconnect, cache warm",
            warm.rate,
            "conn/s",
            baseline=f"p99 set-up {warm.latency_ms['p99']:.0f} ms",
        ),
        Figure(
            "reconnect, no cache",
            uncached.rate,
            "conn/s",
            baseline="warm cache",
            ratio=uncached.rate / warm.rate if warm.rate else None,
        ),
        Figure(
            f"{PAIRS} pairs p99 @ {PAIR_RATE}/s, crowd online",
            busy.latency_ms["p99"],
            "ms",
            baseline=f"nobody online {quiet.latency_ms['p99']:.2f} ms",
            ratio=busy.latency_ms["p99"] / quiet.latency_ms["p99"]
            if quiet.latency_ms["p99"] > 0
            else None,
        ),
    ]
    result.notes.append(
        f"auth backends {configured}; for the no-cache storm switched at run time to {UNCACHED}"
    )
    if fleet.errors or fleet.received != fleet.sent:
        result.notes.append(f"pairs: received {fleet.received}/{fleet.sent}; {fleet.errors[:3]}")
    return result
