"""Transports of the users service: HTTP routers and NATS subscribers."""
