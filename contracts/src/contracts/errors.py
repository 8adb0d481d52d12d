"""The error body of every HTTP answer and WS `error` frame, and the catalogue of codes."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel


class ErrorCode(StrEnum):
    """Machine-readable error codes (stable: clients switch on them)."""

    # generic input problems
    INVALID_JSON = "invalid_json"
    VALIDATION_ERROR = "validation_error"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNKNOWN_ACTION = "unknown_action"
    FRAME_TOO_LARGE = "frame_too_large"
    # field-specific input problems
    INVALID_NAME = "invalid_name"
    INVALID_AVATAR = "invalid_avatar"
    INVALID_PARTICIPANTS = "invalid_participants"
    TOO_MANY_PARTICIPANTS = "too_many_participants"
    INVALID_CONTENT = "invalid_content"
    INVALID_CREATED_AT = "invalid_created_at"
    INVALID_MESSAGE_ID = "invalid_message_id"
    INVALID_ROOM_ID = "invalid_room_id"
    INVALID_REQUEST_ID = "invalid_request_id"
    INVALID_LIMIT = "invalid_limit"
    INVALID_CURSOR = "invalid_cursor"
    # identity and permissions
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"
    NOT_PARTICIPANT = "not_participant"
    SENDER_MISMATCH = "sender_mismatch"
    # state
    NOT_FOUND = "not_found"
    UNKNOWN_USER = "unknown_user"
    UNKNOWN_ROOM = "unknown_room"
    CONFLICT = "conflict"
    TOO_MANY_ROOMS = "too_many_rooms"
    RATE_LIMITED = "rate_limited"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UPGRADE_REQUIRED = "upgrade_required"
    # server side (never for bad input)
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class ErrorDetail(BaseModel):
    """`{"code": ..., "message": ...}`."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """The JSON body of every HTTP error: `{"error": {"code", "message"}}`."""

    error: ErrorDetail

    @classmethod
    def of(cls, code: ErrorCode | str, message: str) -> ErrorBody:
        return cls(error=ErrorDetail(code=str(code), message=message))


# Which error code a validation failure of a given field maps to (first matching field name
# in the error location wins); anything else is `validation_error`.
FIELD_ERROR_CODES: dict[str, ErrorCode] = {
    "name": ErrorCode.INVALID_NAME,
    "avatar": ErrorCode.INVALID_AVATAR,
    "participants": ErrorCode.INVALID_PARTICIPANTS,
    "content": ErrorCode.INVALID_CONTENT,
    "createdAt": ErrorCode.INVALID_CREATED_AT,
    "messageId": ErrorCode.INVALID_MESSAGE_ID,
    "roomId": ErrorCode.INVALID_ROOM_ID,
    "requestId": ErrorCode.INVALID_REQUEST_ID,
    "limit": ErrorCode.INVALID_LIMIT,
    "before": ErrorCode.INVALID_CURSOR,
    "after": ErrorCode.INVALID_CURSOR,
    "cursor": ErrorCode.INVALID_CURSOR,
}


def code_for_location(loc: tuple[int | str, ...]) -> ErrorCode:
    """Map a pydantic error location to the contract's field-specific error code."""
    for part in loc:
        if isinstance(part, str) and part in FIELD_ERROR_CODES:
            return FIELD_ERROR_CODES[part]
    return ErrorCode.VALIDATION_ERROR


class ChatError(Exception):
    """A refusal with a contract error code; services and the edge map it to 4xx / error frames."""

    def __init__(self, code: ErrorCode, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
