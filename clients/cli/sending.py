"""`messenger send USERNAME TEXT`: one message, through the relay, with its answer."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from clients.cli.completion import complete_peer
from clients.cli.context import DELETED_USER, cli_of, logged_in
from clients.cli.edge import EXIT_CODES_HELP
from clients.cli.output import NameLookup, Painter, json_line, local_time, out, person
from clients.library.errors import InvalidInput, MessageRejected, NotConfirmed
from clients.library.history import History, StoredMessage
from protocol.accounts import check_username
from protocol.messages import RelayAnswer, check_text

app = typer.Typer()

ANSWER_TIMEOUT = 5.0


def validated(to: str, text: str) -> tuple[str, str]:
    """The recipient and text as the relay will want them, or InvalidInput saying why not."""
    try:
        to = check_username(to.strip())
    except ValueError as exc:
        raise InvalidInput(f"'{to}' cannot be a username: {exc}") from exc
    try:
        text = check_text(text)
    except ValueError as exc:
        raise InvalidInput(f"cannot send that: {exc}") from exc
    return to, text


def explain_rejection(
    error: MessageRejected, to: str, names: NameLookup | None = None
) -> MessageRejected:
    """The relay's verdict, worded for the person who sent the message."""
    if error.reason == "unknown_recipient" and names is not None and names(to) == DELETED_USER:
        return MessageRejected(f"{to} deleted their account; nothing was sent", error.reason)
    if error.reason == "unknown_recipient":
        return _hinted(
            MessageRejected(f"there is no user named '{to}'; nothing was sent", error.reason),
            "check the spelling; `messenger users NAME` looks a user up",
        )
    if error.reason == "inbox_full":
        who = person(to, names(to) if names else None)
        return _hinted(
            MessageRejected(f"the inbox of {who} is full; nothing was sent", error.reason),
            "try again later, once they have read their messages",
        )
    if error.reason == "rate_limited":  # the library's message already says "slow down: ..."
        return _hinted(
            MessageRejected(f"{error}; nothing was sent", error.reason),
            "wait a few seconds, then send it again",
        )
    return MessageRejected(f"the message was refused as invalid: {error}", error.reason)


def _hinted(error: MessageRejected, hint: str) -> MessageRejected:
    error.hint = hint
    return error


def record_sent(history: History, to: str, text: str, answer: RelayAnswer) -> StoredMessage:
    return history.store_sent(
        answer.id or answer.client_id or "",
        to=to,
        text=text,
        sent_at=answer.sent_at or datetime.now(UTC),
        client_id=answer.client_id,
    )


def record_queued(history: History, to: str, text: str, queued: NotConfirmed) -> StoredMessage:
    """Not yet answered: kept under the id the relay will stamp (known from the client id
    and send time), so the recipient's `delivered` receipt turns it into delivered."""
    return history.store_sent(
        queued.message_id or queued.client_id,
        to=to,
        text=text,
        sent_at=datetime.now(UTC),
        client_id=queued.client_id,
        status="queued",
    )


@app.command(epilog=EXIT_CODES_HELP)
def send(
    ctx: typer.Context,
    username: Annotated[
        str, typer.Argument(help="Who gets it.", metavar="USERNAME", autocompletion=complete_peer)
    ],
    text: Annotated[
        str, typer.Argument(help="The message; `-` reads it from stdin.", metavar="TEXT")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Send a message; prints its id once the server accepted it."""
    cli = cli_of(ctx)
    if text == "-":
        text = sys.stdin.read()
    to, text = validated(username, text)
    with logged_in(cli) as (session, history, names):
        with cli.connect(session) as connection:
            try:
                answer = connection.send(to, text, timeout=ANSWER_TIMEOUT)
            except MessageRejected as exc:
                raise explain_rejection(exc, to, names) from None
            except NotConfirmed as exc:
                stored = record_queued(history, to, text, exc)
                if as_json:
                    out(json_line(stored.to_json()))
                queued = NotConfirmed(
                    f"your message to {to} is queued: the server holds it and will deliver it,"
                    f" but the relay has not confirmed it yet (id {stored.id})",
                    exc.client_id,
                    exc.message_id,
                )
                queued.hint = "do not send it again; the relay may be restarting"
                raise queued from None
        stored = record_sent(history, to, text, answer)
        if as_json:
            out(json_line(stored.to_json()))
            return
        paint = Painter.for_stream(sys.stdout)
        who = "yourself" if to == session.username else paint(person(to, names(to)), "bold")
        out(f"{paint('✓', 'green')} Sent to {who} at {local_time(stored.sent_at)} · id {stored.id}")
