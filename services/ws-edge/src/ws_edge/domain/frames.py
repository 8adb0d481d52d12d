"""Parse a client frame into a contract action or an `error` frame (no I/O)."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from contracts.errors import ErrorCode, ErrorDetail, code_for_location
from contracts.ws import ACTION_NAMES, CLIENT_ACTIONS, ClientAction, ErrorFrame

MAX_DEPTH = 32


def error_frame(
    code: ErrorCode | str,
    message: str,
    request_id: str | None = None,
    message_id: str | None = None,
    room_id: str | None = None,
) -> ErrorFrame:
    return ErrorFrame(
        error=ErrorDetail(code=str(code), message=message),
        requestId=request_id,
        messageId=message_id,
        roomId=room_id,
    )


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _echo(raw: Any, key: str, limit: int) -> str | None:
    value = raw.get(key) if isinstance(raw, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def parse_client_frame(text: str, max_bytes: int) -> ClientAction | ErrorFrame:
    """A validated action, or the error frame that answers it."""
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        return error_frame(ErrorCode.FRAME_TOO_LARGE, f"frames are limited to {max_bytes} bytes")
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        return error_frame(ErrorCode.INVALID_JSON, "frame is not valid JSON")
    request_id = _echo(raw, "requestId", 64)
    message_id = _echo(raw, "messageId", 128)
    if not isinstance(raw, dict):
        return error_frame(ErrorCode.VALIDATION_ERROR, "frame must be a JSON object", request_id)
    if _depth(raw) > MAX_DEPTH:
        return error_frame(ErrorCode.VALIDATION_ERROR, "frame is nested too deeply", request_id)
    action = raw.get("action")
    if action not in ACTION_NAMES:
        return error_frame(
            ErrorCode.UNKNOWN_ACTION,
            f"unknown action; expected one of {', '.join(ACTION_NAMES)}",
            request_id,
            message_id,
        )
    try:
        return CLIENT_ACTIONS.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first.get("loc", ()))
        field = ".".join(str(p) for p in loc[1:])
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return error_frame(code_for_location(loc), f"{field}: {msg}"[:300], request_id, message_id)
