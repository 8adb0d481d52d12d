"""Settings of the rooms service (environment, prefix `CHAT_`); nothing is opened here."""

from __future__ import annotations

from pydantic import Field

from contracts.common import PARTICIPANTS_MAX
from infra.settings import CommonSettings


class Settings(CommonSettings):
    """rooms: HTTP on 8003, limits, bus timeouts and the outbox relay's pace."""

    service_name: str = "rooms"
    port: int = Field(default=8003, ge=0, le=65535)

    max_participants: int = Field(default=PARTICIPANTS_MAX, ge=1, le=1000)
    # rooms one user may create (per replica): a burst, then this many per second
    room_create_burst: int = Field(default=30, ge=1)
    room_create_per_second: float = Field(default=0.5, gt=0)
    # rooms one user may be in: others add users to rooms without asking, and every room of a
    # user is loaded and followed by each of their connections
    max_rooms_per_user: int = Field(default=1000, ge=1, le=100_000)
    # Asking users for ids missing from our read model (read-after-write).
    users_query_timeout_seconds: float = Field(default=2.0, gt=0)
    # JetStream publish of RoomCreated: wait this long for the stream's ack.
    publish_timeout_seconds: float = Field(default=5.0, gt=0)
    # The outbox relay runs on start and then every this many seconds...
    outbox_interval_seconds: float = Field(default=3.0, gt=0)
    # ...and leaves entries younger than this to the request that wrote them.
    outbox_min_age_seconds: float = Field(default=2.0, ge=0)
    # Concurrent bus requests handled at once (beyond that they wait in the subscription).
    bus_concurrency: int = Field(default=256, ge=1)
