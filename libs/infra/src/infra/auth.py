"""Bearer tokens: HS256 JWTs (PyJWT) with the algorithm pinned, expiry and clock-skew leeway."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from contracts.errors import ChatError, ErrorCode
from infra.settings import CommonSettings

ALGORITHM = "HS256"  # pinned: never read from the token header (no `none`, no confusion)
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True)
class Claims:
    """What a verified token says: the subject is the only identity a request has."""

    user_id: str
    expires_at: float
    token_id: str

    @property
    def expires_at_iso(self) -> str:
        moment = datetime.fromtimestamp(self.expires_at, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TokenService:
    """Issues and verifies tokens with one secret (from settings)."""

    def __init__(self, secret: str, issuer: str, ttl_seconds: int, leeway_seconds: int) -> None:
        if not secret:
            raise ValueError("a token secret is required")
        self._secret = secret
        self._issuer = issuer
        self._ttl = ttl_seconds
        self._leeway = leeway_seconds

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> TokenService:
        return cls(
            settings.jwt_secret,
            settings.jwt_issuer,
            settings.token_ttl_seconds,
            settings.token_leeway_seconds,
        )

    def issue(self, user_id: str, now: float | None = None) -> tuple[str, Claims]:
        issued = int(now if now is not None else time.time())
        claims = Claims(user_id=user_id, expires_at=issued + self._ttl, token_id=uuid.uuid4().hex)
        payload = {
            "sub": user_id,
            "iss": self._issuer,
            "iat": issued,
            "exp": int(claims.expires_at),
            "jti": claims.token_id,
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM), claims

    def verify(self, token: str) -> Claims:
        """Return the claims of a valid token, else raise ChatError (401)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise ChatError(ErrorCode.UNAUTHORIZED, "missing or malformed token", 401)
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["sub", "exp", "iat", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise ChatError(ErrorCode.TOKEN_EXPIRED, "token expired", 401) from exc
        except jwt.PyJWTError as exc:
            raise ChatError(ErrorCode.UNAUTHORIZED, "invalid token", 401) from exc
        sub = payload.get("sub")
        exp = payload.get("exp")
        if not isinstance(sub, str) or not sub or not isinstance(exp, int | float):
            raise ChatError(ErrorCode.UNAUTHORIZED, "invalid token", 401)
        return Claims(user_id=sub, expires_at=float(exp), token_id=str(payload.get("jti", "")))

    def seconds_left(self, claims: Claims, now: float | None = None) -> float:
        return claims.expires_at + self._leeway - (now if now is not None else time.time())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
