"""The edge of the command: exceptions become one line on stderr and an exit code.

Nothing below this module prints an error or picks an exit code for one; everything that
escapes a command, including a bug, ends here, so no traceback ever reaches a user (set
MESSENGER_DEBUG=1 to get one on purpose).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence

import typer

from clients.cli.output import Painter, err
from clients.library.errors import MessengerError, NotConfirmed

OK = 0
FAILED = 1
USAGE = 2
INTERRUPTED = 130

# `send` exits 0 only once the relay accepted the message (the pinned interface): a message
# the broker holds but the relay has not confirmed yet is a 1 too, with a line that says it
# is queued and will be delivered, in yellow rather than red.
EXIT_CODES_HELP = (
    "Exit codes: 0 success · 1 failed, with one line on stderr saying why and what to do"
    " (for send also: queued, not yet confirmed by the relay; it will be delivered, do not"
    " send it again) · 2 wrong usage · 130 interrupted."
)


def error_line(message: str, hint: str | None, *, prefix: str = "messenger") -> str:
    paint = Painter.for_stream(sys.stderr)
    line = f"{paint(prefix + ':', 'bold', 'red')} {message}"
    if hint:
        line += paint(f" — {hint}", "dim") if paint.color else f" — {hint}"
    return line.replace("\n", " ")


def report(error: MessengerError) -> int:
    """Print `error` as one line; its exit code."""
    message = str(error)
    if isinstance(error, NotConfirmed):
        paint = Painter.for_stream(sys.stderr)
        err(f"{paint('messenger:', 'bold', 'yellow')} {message} — {error.hint}")
    else:
        err(error_line(message, error.hint))
    return FAILED


def run(command: typer.Typer, args: Sequence[str], prog_name: str = "messenger") -> int:
    """Run the typer app like a shell would, and return the exit code instead of raising."""
    debug = bool(os.environ.get("MESSENGER_DEBUG"))
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s: %(message)s")
    elif not logging.getLogger().handlers:
        # The library's (and pika's) log lines are for debugging: a person sees the
        # status lines and errors the commands print, never a raw log record.
        logging.getLogger().addHandler(logging.NullHandler())
    undecodable = _undecodable_argument(args)
    if undecodable is not None:
        err(
            error_line(
                f"argument {undecodable} is not valid UTF-8 text",
                "check the terminal's encoding (LANG, LC_ALL) or the bytes you passed",
            )
        )
        return USAGE
    click_command = typer.main.get_command(command)
    try:
        result = click_command.main(list(args), prog_name=prog_name, standalone_mode=False)
    except MessengerError as error:
        if debug:
            traceback.print_exc()
        return report(error)
    except typer.Exit as exit_:
        return int(exit_.exit_code)
    except typer.Abort:
        err(error_line("cancelled", None))
        return INTERRUPTED
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return FAILED
    except typer.TyperException as error:  # usage errors and the like, from click
        return _usage_error(error)
    except UnicodeError:  # stdin, a file or the terminal gave bytes that are not UTF-8
        if debug:
            traceback.print_exc()
        err(
            error_line(
                "the input is not valid UTF-8 text",
                "check the terminal's encoding (LANG, LC_ALL) or the file you passed",
            )
        )
        return FAILED
    except Exception as error:
        if debug:
            traceback.print_exc()
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        err(
            error_line(
                f"unexpected error ({type(error).__name__}: {error})",
                "this is a bug in messenger; run again with MESSENGER_DEBUG=1 for details",
            )
        )
        return FAILED
    return result if isinstance(result, int) else OK


def _undecodable_argument(args: Sequence[str]) -> int | None:
    """The 1-based position of the first argument holding bytes that are not UTF-8 (Python
    keeps them as lone surrogates, which no encoder takes later), or None."""
    for position, arg in enumerate(args, start=1):
        if any("\ud800" <= char <= "\udfff" for char in arg):
            return position
    return None


def _usage_error(error: typer.TyperException) -> int:
    code = int(getattr(error, "exit_code", USAGE))
    if type(error).__name__ == "NoArgsIsHelpError":  # the help is on screen already
        return code
    ctx = getattr(error, "ctx", None)
    path = ctx.command_path if ctx is not None else "messenger"
    message = error.format_message()
    message = message[:1].lower() + message[1:] if message else "wrong usage"
    err(error_line(message.rstrip("."), f"see `{path} --help`", prefix=path))
    return code


def _silence_stdout() -> None:
    """The reader went away (`messenger history bob | head`): do not complain at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
