"""Server ids: time-ordered, unique, and stable for a message relayed twice."""

import uuid

from protocol.ids import stable_id
from services.relay.ids import IdGenerator


def test_ids_are_uuid7_and_strictly_increasing_within_one_millisecond():
    generator = IdGenerator(clock_ms=lambda: 1_700_000_000_000)
    ids = [generator.next_id() for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.int >> 80 == 1_700_000_000_000


def test_ids_follow_the_clock_and_survive_it_stepping_back():
    times = iter([1000, 2000, 1500, 3000])
    generator = IdGenerator(clock_ms=lambda: next(times))
    ids = [generator.next_id() for _ in range(4)]
    assert ids == sorted(ids)
    assert [uuid.UUID(i).int >> 80 for i in ids] == [1000, 2000, 2000, 3000]


def test_stable_id_depends_on_sender_client_id_and_time_only():
    first = stable_id("alice", "c-1", 1_700_000_000_123)
    assert first == stable_id("alice", "c-1", 1_700_000_000_123)
    assert first != stable_id("mallory", "c-1", 1_700_000_000_123)
    assert first != stable_id("alice", "c-2", 1_700_000_000_123)
    parsed = uuid.UUID(first)
    assert parsed.version == 8
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == 1_700_000_000_123
    assert stable_id("alice", "c-1", 1_700_000_000_124) > first
