"""The auth service's exceptions; the HTTP and CLI edges translate them to codes."""


class AuthError(Exception):
    """Anything the account logic refuses or cannot do."""


class UsernameTaken(AuthError):
    """Sign-up with a username that already belongs to somebody."""


class UnknownUser(AuthError):
    """No account of that name."""


class InvalidCredentials(AuthError):
    """Wrong username, password or token. One class for all, so callers cannot tell them apart."""


class RateLimited(AuthError):
    """Too many failed logins lately; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins, retry after {retry_after} s")
        self.retry_after = retry_after


class BrokerUnavailable(AuthError):
    """The broker could not be reached to declare an inbox."""


class BrokerLoginRefused(BrokerUnavailable):
    """The broker answered, but refused the auth service account's login (wrong password)."""


class AccountDeleted(UnknownUser):
    """The name belonged to an account that was deleted."""


class NameHeld(UsernameTaken):
    """A deleted account's name, not free again until `held_until` (Unix seconds)."""

    def __init__(self, username: str, held_until: float) -> None:
        super().__init__(username)
        self.held_until = held_until


class WrongPassword(AuthError):
    """The password given to confirm an action is not the account's."""


class ArchiveUnavailable(AuthError):
    """The archive service (history API) could not be reached or refused the request."""
