"""Shell completion of usernames from the local history (never an error, never the network)."""

from __future__ import annotations

from clients.library.history import History
from clients.library.state import Paths, load_session


def complete_peer(incomplete: str) -> list[str]:
    try:
        paths = Paths.from_env()
        session = load_session(paths)
        if session is None:
            return []
        path = paths.history_file(session.username)
        if not path.exists():
            return []
        with History(path, session.username) as history:
            return [peer for peer in history.peers() if peer.startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the shell
        return []
