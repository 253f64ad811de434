"""Logging set-up for the services' entry points: one line per event, nothing else."""

import logging


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pika logs every failed connect attempt at ERROR with a traceback; our code logs the
    # reconnect once, readably.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    # httpx logs every request at INFO; the runner's health polls are not events.
    logging.getLogger("httpx").setLevel(logging.WARNING)
