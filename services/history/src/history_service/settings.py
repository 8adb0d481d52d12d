"""History settings (environment, prefix `CHAT_`); nothing is opened at import."""

from __future__ import annotations

from pydantic import Field

from infra.settings import CommonSettings


class Settings(CommonSettings):
    """What the history service reads from the environment."""

    service_name: str = "history"
    port: int = Field(default=8002, ge=0, le=65535)

    # create_message commands (JetStream pull consumer)
    commands_batch: int = Field(default=64, ge=1, le=1000)
    # short, so that a crashed replica's fetched commands come back soon (held ones are kept
    # alive with progress signals, see entrypoints/bus.py); below the edges' hold of a
    # connection's next message (2 x their CHAT_BUS_TIMEOUT_SECONDS, 10 s) to keep its order
    commands_ack_wait_seconds: float = Field(default=5.0, ge=1)
    nak_delay_seconds: float = Field(default=2.0, ge=0)
    # read-model miss: ask rooms
    rooms_query_timeout_seconds: float = Field(default=2.0, gt=0)
    # per-process caches (bounded)
    tail_cache_size: int = Field(default=100_000, ge=1)
    room_cache_size: int = Field(default=100_000, ge=1)
