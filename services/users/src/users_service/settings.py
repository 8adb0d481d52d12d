"""Settings of the users service (environment, prefix `CHAT_`); nothing is opened here."""

from __future__ import annotations

from pydantic import Field

from infra.settings import CommonSettings


class Settings(CommonSettings):
    """`CommonSettings` plus what only the users service reads."""

    service_name: str = "users"
    port: int = Field(default=8001, ge=0, le=65535)

    # How long POST /users waits for JetStream to acknowledge UserCreated before answering anyway.
    publish_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # On start, UserCreated is re-published for the users created in this window (0: off), so a
    # crash between a user's write and its publish loses no event; at most this many users.
    republish_window_seconds: int = Field(default=600, ge=0, le=7 * 24 * 3600)
    republish_max_users: int = Field(default=10_000, ge=1)
    # Bus queries (GET_USERS) answered at the same time by one process.
    bus_max_concurrency: int = Field(default=64, ge=1, le=10_000)

    @property
    def users_table(self) -> str:
        return self.table("users")
