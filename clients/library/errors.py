"""What can go wrong for a client, as one small exception tree.

The library raises these; only the CLI's edge turns them into a line on stderr and an exit
code. Every message is written to be shown to a person as it is.
"""


class MessengerError(Exception):
    """Base of everything the client library raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


# -- the account API (HTTP) ---------------------------------------------------------------


class ServerUnreachable(MessengerError):
    """The auth service did not answer at the configured URL."""


class AuthenticationFailed(MessengerError):
    """Wrong username or password, or a session that expired or was revoked."""


class RateLimited(MessengerError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, hint=f"try again in {retry_after} s")
        self.retry_after = retry_after


class NotFound(MessengerError):
    pass


class Conflict(MessengerError):
    pass


class AccountDeleted(NotFound):
    """The user deleted their account (HTTP 410): shown as "deleted user"."""


class HistoryUnavailable(MessengerError):
    """The server keeps no history (an older server without the archive), or it is down."""


class InvalidInput(MessengerError):
    pass


class ServerError(MessengerError):
    """The server answered, but not with something this client understands."""


# -- the broker (AMQP) -------------------------------------------------------------------


class BrokerUnreachable(MessengerError):
    pass


class BrokerRefused(MessengerError):
    """The broker refused a login or an operation (ACCESS_REFUSED and the like)."""


class QueueMissing(BrokerRefused):
    """The queue to consume does not exist (404): a device queue that expired, say."""


class LoginRefused(BrokerRefused):
    """The broker refused the login itself: a wrong secret, or a session that expired."""


class LoginUnchecked(BrokerUnreachable):
    """The broker refused the login, but the account API does not say the session is
    invalid: the broker could not ask the auth service (it is restarting). Try again."""


class MessageRejected(MessengerError):
    """The relay answered `rejected`: unknown recipient, invalid message, full inbox, or
    rate_limited (the message reads "slow down: ...")."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PermissionUnchecked(BrokerUnreachable):
    """The broker refused a publish because it could not ask the auth service (down or
    restarting), while the session is valid: nothing was sent; try again."""


class DeliveryUncertain(BrokerUnreachable):
    """The message was published, but the broker never confirmed it: it is delivered if the
    broker had stored it. Sending it again could deliver it twice."""


class NotConfirmed(MessengerError):
    """The broker holds the message, but the relay has not answered in time."""

    def __init__(self, message: str, client_id: str, message_id: str | None = None) -> None:
        super().__init__(message, hint="it is queued and will be delivered")
        self.client_id = client_id
        # The id the relay will stamp (protocol.ids.stable_id), so a later receipt naming
        # it can be matched to this message.
        self.message_id = message_id
