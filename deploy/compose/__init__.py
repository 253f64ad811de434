"""Helpers that docker compose runs inside the service image (see compose.yaml)."""
