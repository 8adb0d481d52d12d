"""Shared infrastructure of the chat services (not wire formats: those live in `contracts`).

One home for what every service needs in the same way: validated settings, token issuing and
verification, the HTTP error shape and health endpoints, and connection helpers for NATS, Redis
and the DynamoDB-compatible store. Keeping it here (instead of copying it into each service)
means one implementation of security-sensitive code (tokens) and of connection policies
(reconnects, timeouts) to review and test.
"""
