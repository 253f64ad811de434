"""Account logic (sign-up, login, logout, broker login) on a real SQLite store, fake broker."""

from __future__ import annotations

import time

import pytest

from protocol.accounts import SignupRequest
from services.auth.accounts import Accounts, StoredAddresses
from services.auth.errors import (
    AccountDeleted,
    BrokerUnavailable,
    InvalidCredentials,
    NameHeld,
    RateLimited,
    UnknownUser,
    UsernameTaken,
    WrongPassword,
)
from services.auth.hashing import PasswordHashing
from services.auth.ratelimit import LoginLimiter, TokenBucket
from services.auth.store import Store, UserRecord
from services.auth.tokens import new_token, token_hash
from tests.unit.auth_fakes import FakeInboxes

PASSWORD = "correct horse battery"




def cheap_hashing(time_cost: int = 1) -> PasswordHashing:
    return PasswordHashing(time_cost=time_cost, memory_kib=1024, parallelism=1)


class CountingHashing(PasswordHashing):
    """Counts the argon2 verifications it runs."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_kib=1024, parallelism=1)
        self.verified = 0

    def verify(self, stored_hash: str | None, password: str) -> tuple[bool, str | None]:
        self.verified += 1
        return super().verify(stored_hash, password)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "users.sqlite3")


@pytest.fixture
def inboxes() -> FakeInboxes:
    return FakeInboxes()


@pytest.fixture
def accounts(store, inboxes) -> Accounts:
    limiter = LoginLimiter.create(per_user=3, per_address=5, window_seconds=60)
    return Accounts(store, cheap_hashing(), limiter, inboxes, token_ttl_seconds=3600)


def sign_up(accounts: Accounts, username: str = "alice") -> None:
    accounts.sign_up(
        SignupRequest(username=username, display_name=username.title(), password=PASSWORD)
    )


def test_sign_up_stores_a_hash_and_declares_the_inbox(accounts, store, inboxes):
    sign_up(accounts)
    record = store.get_user("alice")
    assert record is not None
    assert record.password_hash.startswith("$argon2id$")
    assert PASSWORD not in record.password_hash
    assert inboxes.declared == ["alice"]


def test_sign_up_of_a_taken_name_is_refused(accounts):
    sign_up(accounts)
    with pytest.raises(UsernameTaken):
        sign_up(accounts)


def test_sign_up_while_the_broker_is_down_leaves_no_user_behind(accounts, store, inboxes):
    inboxes.down = True
    with pytest.raises(BrokerUnavailable):
        sign_up(accounts)
    assert store.get_user("alice") is None
    inboxes.down = False
    sign_up(accounts)  # and the name is still free
    assert store.get_user("alice") is not None


def test_login_returns_a_token_stored_only_as_its_hash(accounts, store):
    sign_up(accounts)
    session = accounts.log_in("alice", PASSWORD, "10.0.0.1")
    assert store.session_user(token_hash(session.token), time.time()) == "alice"
    assert store.session_user(session.token, time.time()) is None
    assert session.expires_at.timestamp() == pytest.approx(time.time() + 3600, abs=5)


def test_unknown_user_and_wrong_password_are_the_same_refusal(accounts):
    sign_up(accounts)
    with pytest.raises(InvalidCredentials) as wrong:
        accounts.log_in("alice", "wrong password", "10.0.0.1")
    with pytest.raises(InvalidCredentials) as unknown:
        accounts.log_in("nobody", PASSWORD, "10.0.0.1")
    assert str(wrong.value) == str(unknown.value)


def test_strangers_guessing_do_not_lock_out_a_user_from_an_address_known_to_work(accounts):
    sign_up(accounts)
    accounts.log_in("alice", PASSWORD, "10.0.0.1")
    for attacker in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        with pytest.raises(InvalidCredentials):
            accounts.log_in("alice", "wrong password", attacker)
    with pytest.raises(RateLimited) as limited:  # a new address is a stranger: it waits
        accounts.log_in("alice", PASSWORD, "10.0.0.2")
    assert limited.value.retry_after >= 1
    assert accounts.log_in("alice", PASSWORD, "10.0.0.1").token  # alice's own is not


def test_failed_broker_logins_count_toward_the_stranger_budget(accounts):
    sign_up(accounts)
    for _ in range(3):
        assert not accounts.broker_login("alice", "wrong password")
    with pytest.raises(RateLimited):
        accounts.log_in("alice", PASSWORD, "10.0.0.1")
    assert not accounts.broker_login("alice", PASSWORD)


def test_broker_refusals_of_names_that_are_no_user_run_no_hash(store, inboxes):
    hashing = CountingHashing()
    accounts = Accounts(store, hashing, LoginLimiter.create(3, 5, 60), inboxes, 3600)
    for _ in range(50):
        assert not accounts.broker_login("nobody", "guess")
        assert not accounts.broker_login("Not A Name", "guess")
    assert hashing.verified == 0


def test_broker_password_checks_beyond_the_budget_are_refused_without_a_hash(store, inboxes):
    hashing = CountingHashing()
    accounts = Accounts(
        store, hashing, LoginLimiter.create(100, 100, 60), inboxes, 3600,
        broker_password_checks=TokenBucket(rate=0.001, burst=2),
    )  # fmt: skip
    sign_up(accounts)
    token = accounts.log_in("alice", PASSWORD, "10.0.0.1").token
    verified = hashing.verified
    results = [accounts.broker_login("alice", "wrong password") for _ in range(5)]
    assert results == [False] * 5
    assert hashing.verified == verified + 2
    assert not accounts.broker_login("alice", PASSWORD)  # the budget is spent
    assert accounts.broker_login("alice", token)  # a token never needs it


def test_http_logins_for_malformed_names_run_no_hash_and_count_per_address(store, inboxes):
    hashing = CountingHashing()
    accounts = Accounts(store, hashing, LoginLimiter.create(3, 2, 60), inboxes, 3600)
    for _ in range(2):
        with pytest.raises(InvalidCredentials):
            accounts.log_in("Not A Name", "guess", "10.0.0.1")
    assert hashing.verified == 0
    with pytest.raises(RateLimited):
        accounts.log_in("Not A Name", "guess", "10.0.0.1")


def test_a_live_token_still_opens_the_broker_while_passwords_are_limited(accounts):
    sign_up(accounts)
    token = accounts.log_in("alice", PASSWORD, "10.0.0.1").token
    for _ in range(3):
        accounts.broker_login("alice", "wrong password")
    assert accounts.broker_login("alice", token)


def test_broker_login_accepts_the_password_or_an_own_live_token(accounts):
    sign_up(accounts)
    sign_up(accounts, "bob")
    token = accounts.log_in("alice", PASSWORD, "10.0.0.1").token
    assert accounts.broker_login("alice", PASSWORD)
    assert accounts.broker_login("alice", token)
    assert not accounts.broker_login("bob", token)  # alice's token is not bob's


def test_broker_login_refuses_reserved_and_unknown_names(accounts):
    for name in ("guest", "relay", "auth", "admin", "system", "nobody", "Alice"):
        assert not accounts.broker_login(name, PASSWORD)


def test_an_expired_token_is_refused(accounts, store):
    sign_up(accounts)
    token = new_token()
    store.add_session(token_hash(token), "alice", time.time() - 1)
    assert not accounts.broker_login("alice", token)
    assert accounts.session_user(token) is None


def test_logout_revokes_the_token(accounts):
    sign_up(accounts)
    token = accounts.log_in("alice", PASSWORD, "10.0.0.1").token
    accounts.log_out(token)
    assert not accounts.broker_login("alice", token)
    with pytest.raises(InvalidCredentials):
        accounts.log_out(token)


def test_a_hash_with_old_parameters_is_upgraded_at_the_next_login(store, inboxes):
    old = Accounts(store, cheap_hashing(1), LoginLimiter.create(3, 5, 60), inboxes, 3600)
    sign_up(old)
    old_hash = store.get_user("alice").password_hash
    new = Accounts(store, cheap_hashing(2), LoginLimiter.create(3, 5, 60), inboxes, 3600)
    new.log_in("alice", PASSWORD, None)
    upgraded = store.get_user("alice").password_hash
    assert upgraded != old_hash
    assert ",t=2," in upgraded
    new.log_in("alice", PASSWORD, None)  # and the upgraded hash verifies
    assert store.get_user("alice").password_hash == upgraded


def test_looking_up_an_unknown_user_raises(accounts):
    with pytest.raises(UnknownUser):
        accounts.user("nobody")


def test_expired_sessions_are_swept_with_their_device_queues(store, inboxes):
    now = [1_000_000.0]
    limiter = LoginLimiter.create(per_user=3, per_address=5, window_seconds=60)
    accounts = Accounts(
        store, cheap_hashing(), limiter, inboxes, token_ttl_seconds=60, clock=lambda: now[0]
    )
    sign_up(accounts)
    old = accounts.log_in("alice", PASSWORD, None)
    now[0] += 30
    young = accounts.log_in("alice", PASSWORD, None)
    now[0] += 31  # the first has expired, the second not yet
    assert accounts.sweep_expired_sessions() == 1
    assert inboxes.deleted == [old.device_queue]
    assert accounts.current_session(young.token).device_queue == young.device_queue
    assert accounts.sweep_expired_sessions() == 0


def test_logout_deletes_the_device_queue_and_only_its_own(accounts, inboxes):
    sign_up(accounts)
    first = accounts.log_in("alice", PASSWORD, None)
    second = accounts.log_in("alice", PASSWORD, None)
    assert first.device_queue != second.device_queue
    accounts.log_out(first.token)
    assert inboxes.deleted == [first.device_queue]
    assert accounts.redeclare_device(second.token) == second.device_queue


def test_a_deleted_name_is_held_then_free_again(store, inboxes):
    now = [1_000_000.0]
    limiter = LoginLimiter.create(per_user=3, per_address=5, window_seconds=60)
    forgotten: list[str] = []
    accounts = Accounts(
        store, cheap_hashing(), limiter, inboxes, token_ttl_seconds=600,
        clock=lambda: now[0], deleted_name_hold_seconds=100, forget_archive=forgotten.append,
    )  # fmt: skip
    sign_up(accounts)
    session = accounts.log_in("alice", PASSWORD, None)
    with pytest.raises(WrongPassword):
        accounts.delete_account(session.token, "not the password")
    assert forgotten == [] and store.get_user("alice") is not None
    accounts.delete_account(session.token, PASSWORD)
    assert forgotten == ["alice"] and inboxes.deleted == [session.device_queue]
    with pytest.raises(AccountDeleted):
        accounts.user("alice")
    with pytest.raises(NameHeld):
        sign_up(accounts)
    now[0] += 101
    sign_up(accounts)  # the hold is over
    assert accounts.user("alice").username == "alice"


def test_a_session_from_before_devices_gets_one_when_it_asks_for_its_queue(
    accounts, store, inboxes
):
    sign_up(accounts)
    token = "an-old-token"
    store.add_session(token_hash(token), "alice", expires_at=time.time() + 600)
    assert accounts.current_session(token).device_queue == ""
    queue = accounts.redeclare_device(token)
    assert queue.startswith("device.alice.")
    assert accounts.current_session(token).device_queue == queue
    assert accounts.redeclare_device(token) == queue  # the same device from now on


def test_known_addresses_are_kept_in_the_store_and_outlive_a_restart(store, inboxes):
    def service() -> Accounts:
        known = StoredAddresses(store, remember_seconds=3600)
        limiter = LoginLimiter.create(per_user=2, per_address=100, window_seconds=60, known=known)
        return Accounts(store, cheap_hashing(), limiter, inboxes, token_ttl_seconds=3600)

    first = service()
    sign_up(first)
    first.log_in("alice", PASSWORD, "10.0.0.1")
    restarted = service()  # the failures and delays are forgotten, the address is not
    for attacker in ("192.0.2.1", "192.0.2.2"):
        with pytest.raises(InvalidCredentials):
            restarted.log_in("alice", "wrong password", attacker)
    with pytest.raises(RateLimited):
        restarted.log_in("alice", PASSWORD, "10.0.0.2")
    assert restarted.log_in("alice", PASSWORD, "10.0.0.1").token


def test_the_store_keeps_the_latest_addresses_of_a_user_only(store):
    store.add_user(UserRecord("alice", "Alice", "h", 0.0))
    for n in range(20):
        store.remember_address("alice", f"10.0.0.{n}", float(n))
    assert not store.address_known("alice", "10.0.0.3", since=0)
    assert store.address_known("alice", "10.0.0.19", since=0)
    assert not store.address_known("alice", "10.0.0.19", since=20)
