"""WebSocket Origin check (no I/O): browsers send `Origin`, other clients usually do not."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Whether a handshake with this `Origin` header may open a WebSocket.

    - no `Origin` header: a non-browser client (it cannot be driven by another site): allowed;
    - the node's own origin (the web client it serves; its host:port equals the `Host` header);
    - an origin listed in `allowed` (lower case, no trailing slash), or `*` listed.
    Everything else, `null` included (sandboxed frames, `file:` pages), is refused.
    """
    if origin is None:
        return True
    value = origin.strip().rstrip("/").lower()
    if "*" in allowed or value in allowed:
        return True
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return host is not None and parts.netloc == host.strip().lower()
