"""Edge node settings (env prefix CHAT_); every limit is configurable."""

from __future__ import annotations

from pydantic import Field

from infra.settings import CommonSettings


class Settings(CommonSettings):
    service_name: str = "ws-edge"
    port: int = 8080
    node_id: str = Field(default="a", pattern=r"^[A-Za-z0-9_-]{1,32}$")

    # the edge's own calls are each bounded by bus_timeout_seconds, and an HTTP send or a
    # stream's opening makes up to four in a row (rooms, room, publish, the store's answer):
    # its deadline leaves room for them, so a queued message gets its 202, not a 503
    response_timeout_seconds: float = Field(default=30.0, gt=0, le=300)

    public_users_url: str = "http://127.0.0.1:8001"
    public_rooms_url: str = "http://127.0.0.1:8003"
    public_history_url: str = "http://127.0.0.1:8002"

    # frames
    max_frame_bytes: int = Field(default=64 * 1024, ge=1024)
    # frames over this are not even read: the socket is closed with 1009
    hard_max_frame_bytes: int = Field(default=1024 * 1024, ge=1024)
    # per connection token bucket: capacity and refill per second
    rate_burst: int = Field(default=200, ge=1)
    rate_per_second: float = Field(default=100.0, gt=0)
    # refused frames within the window that make a client abusive (closed with 4429)
    abuse_refusals: int = Field(default=100, ge=1)
    abuse_window_seconds: float = Field(default=10.0, gt=0)
    # frames waiting for a slow client before it is disconnected with 4408
    send_queue_frames: int = Field(default=1024, ge=8)
    # write frames straight to the socket's transport while nothing is queued for it (built
    # once per message for every recipient); off = every frame through the ASGI send
    ws_direct_writes: bool = True
    # a server close not taken by the peer within this time drops the socket (no close frame)
    close_timeout_seconds: float = Field(default=5.0, gt=0)
    # per user across every edge node (the Redis connection map), checked at the handshake
    max_connections_per_user: int = Field(default=20, ge=1)
    # per user token bucket shared by that user's connections on one node
    user_rate_burst: int = Field(default=400, ge=1)
    user_rate_per_second: float = Field(default=200.0, gt=0)
    # browser origins allowed to open /ws besides the node's own (comma separated, `*` = any);
    # a handshake without an Origin header (non-browser client) is always allowed
    ws_allowed_origins: str = ""
    ping_interval_seconds: float = Field(default=20.0, gt=0)
    bus_timeout_seconds: float = Field(default=5.0, gt=0)
    node_ttl_seconds: int = Field(default=15, ge=3)
    sync_replay_limit: int = Field(default=500, ge=1, le=500)
    # presence: a user is announced offline only after this long without any connection anywhere
    presence_grace_seconds: float = Field(default=5.0, gt=0)
    # SSE (`GET /events`): comment heartbeat interval
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # `POST /rooms/{id}/messages`: how long to wait for the stored message (201) before 202
    http_send_wait_seconds: float = Field(default=5.0, gt=0)
    # the web client gives up on an HTTP call after this long and says so (GET /config)
    web_request_timeout_seconds: float = Field(default=15.0, gt=0, le=300)

    @property
    def ws_allowed_origin_list(self) -> list[str]:
        return [
            o.strip().rstrip("/").lower() for o in self.ws_allowed_origins.split(",") if o.strip()
        ]
