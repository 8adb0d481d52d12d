"""Transports: FastAPI routers (http.py) and NATS subscribers / JetStream consumers (bus.py)."""
