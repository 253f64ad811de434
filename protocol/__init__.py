"""The wire contract shared by the services and the client: names, bodies, version."""

PROTOCOL_VERSION = 1
