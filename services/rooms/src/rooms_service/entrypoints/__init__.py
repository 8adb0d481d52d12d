"""Transports of the rooms service: HTTP (FastAPI) and NATS."""
