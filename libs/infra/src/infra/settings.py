"""Settings base: pydantic-settings read from the environment (prefix `CHAT_`), nothing opened."""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Only ever used in development mode; production refuses to start without CHAT_JWT_SECRET.
DEV_JWT_SECRET = "dev-only-insecure-secret-change-me-0123456789"


class CommonSettings(BaseSettings):
    """What every service reads. Each service subclasses it with its own fields."""

    model_config = SettingsConfigDict(env_prefix="CHAT_", extra="ignore", case_sensitive=False)

    env: Literal["development", "production", "test"] = "development"
    service_name: str = "chat"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    jwt_secret: str = ""
    jwt_issuer: str = "chat"
    token_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=90 * 24 * 3600)
    token_leeway_seconds: int = Field(default=30, ge=0, le=300)

    nats_urls: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis connections per process; a burst beyond them waits (up to the wait) for a free one
    redis_max_connections: int = Field(default=64, ge=1, le=10_000)
    redis_pool_wait_seconds: float = Field(default=10.0, gt=0)
    dynamo_url: str = "http://127.0.0.1:8000"  # empty: the AWS default endpoint
    aws_region: str = "us-east-1"
    aws_access_key_id: str = "local"
    aws_secret_access_key: str = "local"
    table_prefix: str = "chat_"
    # Connections on which single-item store calls are pipelined (infra.dynamo_http); unset:
    # 2 for an http:// endpoint, 0 (off) for https://
    dynamo_lanes: int | None = Field(default=None, ge=0, le=64)

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # a connection whose request headers are not complete this long after it opened (or after
    # its next request began) gets 408 and is closed: idle sockets cannot pile up
    header_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    # request line and headers larger than this: 431 and closed
    max_header_bytes: int = Field(default=64 * 1024, ge=4096, le=1024 * 1024)
    # a request body (at most max_body_bytes) not received this long after its headers: 408
    body_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    # an HTTP request whose answer has not started this long after its body was read (a
    # dependency not answering): 503 `unavailable`
    response_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    log_level: str = "INFO"
    cors_origins: str = ""  # comma separated; empty: no cross-origin access

    @model_validator(mode="after")
    def _secret_required_outside_development(self) -> CommonSettings:
        if not self.jwt_secret:
            if self.env == "production":
                raise ValueError("CHAT_JWT_SECRET must be set when CHAT_ENV=production")
            # development and test: a well-known secret, never used in production
            self.jwt_secret = DEV_JWT_SECRET
        elif self.env == "production" and (
            self.jwt_secret == DEV_JWT_SECRET or len(self.jwt_secret) < 32
        ):
            raise ValueError("CHAT_JWT_SECRET must be at least 32 characters and not the dev one")
        return self

    @property
    def nats_servers(self) -> list[str]:
        return [u.strip() for u in self.nats_urls.split(",") if u.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def table(self, name: str) -> str:
        return f"{self.table_prefix}{name}"


def new_secret() -> str:
    return secrets.token_urlsafe(48)
