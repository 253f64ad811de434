"""`messenger-relay`: settings -> relay -> run until SIGTERM/SIGINT."""

import logging
import signal
from types import FrameType

import typer
from pydantic import ValidationError

from broker.pika_io import coalesce_pika_writes, guard_property_decoding
from services.logs import configure_logging
from services.relay.lifecycle import Relay
from services.relay.settings import RelaySettings
from services.settings_errors import describe_settings_errors

logger = logging.getLogger("services.relay")


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def relay() -> None:
    """Relay direct messages: outbox shards -> recipients' inboxes, until SIGTERM or Ctrl-C.

    Configured by MESSENGER_RELAY_* environment variables; MESSENGER_RELAY_AMQP_PASSWORD
    (the broker's `relay` account) is required. Run as many replicas as you like.
    """
    raise typer.Exit(_run())


def _run() -> int:
    try:
        settings = RelaySettings()  # the password comes from the environment
    except ValidationError as exc:
        configure_logging()
        problems = describe_settings_errors(exc, RelaySettings.model_config["env_prefix"])
        logger.error("invalid relay settings: %s", problems)
        return 2
    configure_logging(settings.log_level)
    coalesce_pika_writes()
    guard_property_decoding()  # a message pika cannot decode must not stop the relay
    relay = Relay(settings)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        relay.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("messenger-relay starting")
    return relay.run()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
