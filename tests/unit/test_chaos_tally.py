"""`make chaos` counts what a person would notice: lost, shown twice, reordered."""

from __future__ import annotations

from deploy.chaos import Outcome, Traffic, _tally


def traffic(verdicts: list[str], seen: list[tuple[int, str]]) -> Traffic:
    """Messages relay|1|1..n with these verdicts; `seen`: (sequence number, server id)."""
    recorded = Traffic()
    for seq, verdict in enumerate(verdicts, start=1):
        recorded.outcomes.append(Outcome("relay", 1, seq, float(seq), verdict))
    for when, (seq, server_id) in enumerate(seen):
        recorded.seen.append((f"relay|1|{seq}", server_id, float(when)))
    return recorded


def test_a_clean_run_counts_nothing_bad():
    tally = _tally(traffic(["accepted"] * 3, [(1, "a"), (2, "b"), (3, "c")]), "relay")
    assert (tally.sent, tally.accepted, tally.seen) == (3, 3, 3)
    assert (tally.lost, tally.twice, tally.reordered) == (0, 0, 0)


def test_lost_twice_and_reordered_are_told_apart():
    recorded = traffic(
        ["accepted", "held", "not sent", "uncertain", "accepted"],
        # 2 arrives under two ids (shown twice), 1 again under its own id (a redelivery,
        # shown once), 5 before 4 (reordered); 3 was not sent and is not missed.
        [(1, "a"), (2, "b"), (2, "b2"), (1, "a"), (5, "e"), (4, "d")],
    )
    tally = _tally(recorded, "relay")
    assert (tally.accepted, tally.held, tally.not_sent, tally.uncertain) == (2, 1, 1, 1)
    assert tally.seen == 4 and tally.lost == 0
    assert tally.twice == 1 and tally.reordered == 1


def test_an_accepted_message_never_seen_is_lost_and_named():
    tally = _tally(traffic(["accepted", "accepted"], [(1, "a")]), "relay")
    assert tally.lost == 1 and tally.lost_messages == ["relay|1|2"]
