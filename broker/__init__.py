"""How our processes talk to RabbitMQ, shared by the services and the client.

`protocol/` says what goes over the wire; this package says how a connection to the broker
is made and kept: the node list and the one backoff (nodes.py, backoff.py), connection
parameters (params.py), what a pika error means (errors.py), direct reply-to addresses
(reply_to.py), the broker settings both services read (settings.py), and the only code here
that touches pika's private names (pika_io.py).
"""
