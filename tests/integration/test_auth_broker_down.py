"""Sign-up while the broker cannot be reached: 503, and no half-created user."""

from __future__ import annotations

from pathlib import Path

import httpx

from deploy.local_broker import free_port
from services.auth.store import Store
from tests.integration.stack import Broker, start_auth


def test_sign_up_without_a_broker_is_503_and_leaves_no_user(broker: Broker, tmp_path: Path):
    service = start_auth(
        broker,
        tmp_path,
        MESSENGER_AUTH_BROKER_API_PORT=str(free_port()),
        MESSENGER_AUTH_AMQP_PORT=str(free_port()),  # nothing listens there
    )
    try:
        response = httpx.post(
            f"{service.url}/v1/users",
            json={"username": "stranded", "display_name": "S", "password": "long enough"},
            timeout=60,
        )
        assert response.status_code == 503
        assert "broker" in response.json()["detail"]
        assert httpx.get(f"{service.url}/v1/users/stranded").status_code == 404
        store = Store(service.db_path)
        try:
            assert store.count_users() == 0
        finally:
            store.close()
        assert service.alive
    finally:
        service.stop()
