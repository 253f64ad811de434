"""`messenger-archive`: settings -> store -> ingest thread + history API, until SIGTERM."""

from __future__ import annotations

import logging
import threading

import typer
import uvicorn
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from services.archive.api import create_archive_app
from services.archive.ingest import Ingest
from services.archive.settings import ArchiveSettings
from services.archive.store import Store
from services.logs import configure_logging
from services.settings_errors import describe_settings_errors

logger = logging.getLogger("services.archive")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def archive() -> None:
    """Store every message and receipt the relay routes, and serve the history API.

    Configured by MESSENGER_ARCHIVE_* environment variables; MESSENGER_ARCHIVE_AMQP_PASSWORD
    (the broker's `archive` account) and MESSENGER_ARCHIVE_KEY (shared with the auth
    service) are required. MESSENGER_ARCHIVE_DATABASE_URL: sqlite:///PATH (default) or
    postgresql://USER@HOST/DB.
    """
    raise typer.Exit(_run())


def _run() -> int:
    try:
        settings = ArchiveSettings()
    except ValidationError as exc:
        configure_logging()
        problems = describe_settings_errors(exc, ArchiveSettings.model_config["env_prefix"])
        logger.error("invalid archive settings: %s", problems)
        return 2
    configure_logging(settings.log_level)
    try:
        store = Store.open(settings.database_url)
    except SQLAlchemyError as exc:
        logger.error("cannot open the archive database: %s", str(exc).splitlines()[0])
        return 2
    ingest = Ingest(settings, store)
    consumer = threading.Thread(target=ingest.run, name="archive-ingest", daemon=True)
    consumer.start()
    server = uvicorn.Server(
        uvicorn.Config(
            create_archive_app(store, settings.key.get_secret_value()),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
    )
    logger.info("messenger-archive: history API on http://%s:%d", settings.host, settings.port)
    try:
        server.run()  # handles SIGINT/SIGTERM
    finally:
        ingest.stop()
        consumer.join(timeout=10)
        store.close()
    logger.info("stopped")
    return 0 if server.started else 1


def main() -> None:
    app()


if __name__ == "__main__":
    main()
