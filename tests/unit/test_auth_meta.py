"""What GET /v1/meta announces, and what the OpenAPI document says about errors."""

from __future__ import annotations

import pytest

from services.auth.public_api import amqp_url_with_vhost


@pytest.mark.parametrize(
    ("url", "vhost", "announced"),
    [
        ("amqp://127.0.0.1:5682", "messenger", "amqp://127.0.0.1:5682/messenger"),
        ("amqp://broker", "messenger", "amqp://broker/messenger"),
        ("amqp://broker:5672/", "messenger", "amqp://broker:5672/messenger"),
        ("amqp://broker:5672", "/", "amqp://broker:5672/%2F"),  # RabbitMQ's URI spec
        ("amqp://broker:5672", "a b/c", "amqp://broker:5672/a%20b%2Fc"),
        ("amqp://broker:5672/other", "messenger", "amqp://broker:5672/other"),  # left alone
    ],
)
def test_the_announced_url_names_the_vhost(url: str, vhost: str, announced: str):
    assert amqp_url_with_vhost(url, vhost) == announced
