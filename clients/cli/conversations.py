"""`messenger conversations`: everyone you talk with, newest first, with unread counts.

From the server (the archive knows every device's messages and the read state), or, when
it cannot be asked, from the local history, saying so on stderr.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from clients.cli.context import DELETED_USER, Names, cli_of, logged_in
from clients.cli.edge import EXIT_CODES_HELP
from clients.cli.output import Painter, clean, err, json_line, local_time, out, person
from clients.library.errors import AuthenticationFailed, HistoryUnavailable, MessengerError
from clients.library.history import History
from protocol.conversations import ArchivedMessage, ConversationSummary

app = typer.Typer()

PREVIEW_CHARS = 50


@app.command(epilog=EXIT_CODES_HELP)
def conversations(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON object per conversation: peer, display_name (null: a deleted"
            " user), last_message, unread, updated_at.",
        ),
    ] = False,
) -> None:
    """Your conversations, newest first: who, the last message, when, how many unread."""
    cli = cli_of(ctx)
    with logged_in(cli) as (session, history, names):
        try:
            with cli.conversations(session) as api:
                summaries = api.conversations()
        except AuthenticationFailed:
            raise
        except MessengerError as exc:
            if not (isinstance(exc, HistoryUnavailable) and "keeps no history" in str(exc)):
                err(f"From the local history only: {exc}.")
            summaries = _local(history, names)
        if not summaries:
            if not as_json:
                err("No conversations yet.")
            return
        paint = Painter.for_stream(sys.stdout)
        for summary in summaries:
            if as_json:
                out(json_line(_json(summary)))
            else:
                out(_line(summary, session.username, paint))


def _local(history: History, names: Names) -> list[ConversationSummary]:
    summaries = []
    for local in history.summaries():
        last = ArchivedMessage.model_validate(
            {
                "id": local.last.id,
                "client_id": local.last.client_id,
                "from": local.last.sender,
                "to": local.last.recipient,
                "text": local.last.text,
                "sent_at": local.last.sent_at,
                "status": local.last.status
                if local.last.status in ("accepted", "delivered", "read")
                else "accepted",
            }
        )
        name = names(local.peer)
        summaries.append(
            ConversationSummary(
                peer=local.peer,
                display_name=None if name == DELETED_USER else (name or local.peer),
                last_message=last,
                unread=local.unread,
                updated_at=local.last.sent_at,
            )
        )
    return summaries


def _json(summary: ConversationSummary) -> dict[str, Any]:
    last = summary.last_message
    return {
        "peer": summary.peer,
        "display_name": summary.display_name,
        "last_message": None if last is None else _message(last),
        "unread": summary.unread,
        "updated_at": _iso(summary.updated_at),
    }


def _message(message: ArchivedMessage) -> dict[str, Any]:
    """Like a row of `history --json` (times as Python writes them there)."""
    row = message.model_dump(mode="json", by_alias=True)
    row["sent_at"] = message.sent_at.isoformat()
    return row


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _line(summary: ConversationSummary, me: str, paint: Painter) -> str:
    """`[14:03] Bob Ross (bob) · 2 unread · you: see you there`"""
    who = person(summary.peer, summary.display_name or DELETED_USER)
    parts = [paint(who, "bold")]
    if summary.unread:
        parts.append(paint(f"{summary.unread} unread", "yellow"))
    last = summary.last_message
    if last is not None:
        preview = clean(last.text).replace("\n", " ")
        if len(preview) > PREVIEW_CHARS:
            preview = preview[: PREVIEW_CHARS - 1] + "…"
        parts.append(("you: " if last.sender == me and summary.peer != me else "") + preview)
    moment = summary.updated_at or (last.sent_at if last else None)
    stamp = paint(f"[{local_time(moment)}]", "dim") + " " if moment else ""
    return stamp + " · ".join(parts)
