"""Tokens: issue/verify, pinned algorithm, expiry with leeway, tampering."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from contracts.errors import ChatError, ErrorCode
from infra.auth import TokenService, bearer_token

SECRET = "s" * 48


def _svc(ttl: int = 3600, leeway: int = 5) -> TokenService:
    return TokenService(SECRET, "chat", ttl, leeway)


def test_roundtrip() -> None:
    """A fresh token verifies to its subject and expiry."""
    token, claims = _svc().issue("user_1")
    verified = _svc().verify(token)
    assert verified.user_id == "user_1"
    assert verified.expires_at == claims.expires_at
    assert verified.expires_at_iso.endswith("Z")


def test_expired_refused_after_leeway() -> None:
    """Expired tokens are refused with token_expired once past the leeway."""
    token, _ = _svc(ttl=60, leeway=5).issue("u", now=time.time() - 70)
    with pytest.raises(ChatError) as err:
        _svc(ttl=60, leeway=5).verify(token)
    assert err.value.code == ErrorCode.TOKEN_EXPIRED
    recent, _ = _svc(ttl=60, leeway=30).issue("u", now=time.time() - 70)
    assert _svc(ttl=60, leeway=30).verify(recent).user_id == "u"


def test_alg_none_and_other_algorithms_refused() -> None:
    """Unsigned (`alg: none`) and HS512 tokens are refused: the algorithm is pinned."""
    now = int(time.time())
    payload = {"sub": "u", "iss": "chat", "iat": now, "exp": now + 60}
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = base64.urlsafe_b64encode(json.dumps(payload).encode())
    unsigned = header.rstrip(b"=").decode() + "." + body.rstrip(b"=").decode() + "."
    hs512 = jwt.encode(payload, SECRET, algorithm="HS512")
    for token in (unsigned, hs512):
        with pytest.raises(ChatError) as err:
            _svc().verify(token)
        assert err.value.status == 401


def test_tampered_wrong_secret_truncated_refused() -> None:
    """Another secret, a truncated token or garbage are all 401."""
    token, _ = _svc().issue("u")
    other = TokenService("o" * 48, "chat", 60, 0).issue("u")[0]
    for bad in (other, token[:-5], "garbage", "", "a.b.c", "x" * 5000):
        with pytest.raises(ChatError):
            _svc().verify(bad)


def test_bearer_header_parsing() -> None:
    """Only `Bearer <token>` headers yield a token."""
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None
