"""Field types and rules shared by every wire format (one definition, used by all models)."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, WithJsonSchema
from pydantic import BaseModel as _PydanticBase

NAME_MAX = 64
AVATAR_MAX = 2048
CONTENT_MAX = 4000
MESSAGE_ID_MAX = 128
REQUEST_ID_MAX = 64
PARTICIPANTS_MAX = 100
CREATED_AT_MAX_AHEAD = timedelta(minutes=5)

ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)


class WireModel(_PydanticBase):
    """Base of every wire model: strict types (a number is not a name), unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True, frozen=False)


def _check_text(value: str, what: str) -> None:
    """Refuse lone surrogates (`"\\ud800"` in JSON decodes to one): not Unicode text, so no
    UTF-8 encoder takes them (the store client's failed with a 503, a server error for bad
    input); the WebSocket's JSON parser already refuses them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} must be valid Unicode text (no lone surrogates)") from exc


def _check_name(value: str) -> str:
    _check_text(value, "name")
    name = value.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise ValueError(f"name must be 1-{NAME_MAX} characters after trimming")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise ValueError("name must not contain control characters")
    return name


def _check_avatar(value: str) -> str:
    _check_text(value, "avatar")
    if len(value) > AVATAR_MAX:
        raise ValueError(f"avatar must be at most {AVATAR_MAX} characters")
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("avatar must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError("avatar must be an http(s) URL") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or not parts.hostname:
        raise ValueError("avatar must be an http(s) URL")
    return value


def is_identifier(value: str) -> bool:
    """The contract's id rule (1-128 characters from letters, digits and `_-.:`). `fullmatch`,
    not `match`: Python's `$` also matches before a final newline, so `match` let "id\n" in
    (JSON Schema's `$`, in ID_PATTERN, does not)."""
    return _ID_RE.fullmatch(value) is not None


def _check_id(value: str) -> str:
    if not is_identifier(value):
        raise ValueError("must be 1-128 characters from letters, digits and _-.:")
    return value


def _check_content(value: str) -> str:
    _check_text(value, "content")
    if not 1 <= len(value) <= CONTENT_MAX:
        raise ValueError(f"content must be 1-{CONTENT_MAX} characters")
    if not value.strip():
        raise ValueError("content must not be only whitespace")
    return value


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp that carries a time zone; ValueError otherwise."""
    if len(value) > 64:
        raise ValueError("createdAt is too long")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError("createdAt must be an ISO-8601 timestamp with a time zone") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("createdAt must carry a time zone (e.g. Z or +02:00)")
    return parsed


def _check_timestamp(value: str) -> str:
    parse_timestamp(value)
    return value


def check_not_in_future(value: str, now: datetime | None = None) -> None:
    """Refuse a client timestamp more than 5 minutes ahead of the server's clock."""
    moment = parse_timestamp(value)
    current = now or datetime.now(UTC)
    if moment - current > CREATED_AT_MAX_AHEAD:
        raise ValueError("createdAt is more than 5 minutes in the future")


def utc_now_iso() -> str:
    """Server timestamps: ISO-8601, UTC, milliseconds, `Z` (the seed's format)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The rules are checked by the validators (with the contract's messages); the JSON schemas
# beside them say the same to OpenAPI and AsyncAPI readers and to generated clients.
UserName = Annotated[
    str,
    AfterValidator(_check_name),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "description": f"1-{NAME_MAX} characters after trimming, no control characters",
        }
    ),
]
AvatarUrl = Annotated[
    str,
    AfterValidator(_check_avatar),
    WithJsonSchema(
        {  # no `format: uri`: the server keeps what was typed (an IRI too), without rewriting
            "type": "string",
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
            "maxLength": AVATAR_MAX,
            "description": "an http(s) URL, kept as sent",
        }
    ),
]
Identifier = Annotated[
    str, AfterValidator(_check_id), WithJsonSchema({"type": "string", "pattern": ID_PATTERN})
]
MessageContent = Annotated[
    str,
    AfterValidator(_check_content),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": CONTENT_MAX,
            # no pattern for "not only whitespace": JavaScript's \s and Python's str.strip()
            # disagree on a few characters (U+FEFF, U+001C-U+001F, U+0085)
            "description": f"1-{CONTENT_MAX} characters (not bytes), not only whitespace",
        }
    ),
]
Timestamp = Annotated[
    str,
    AfterValidator(_check_timestamp),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 64,
            "description": "ISO-8601 with a time zone, at most 5 minutes ahead; kept as sent",
        }
    ),
]


def _check_request_id(value: str) -> str:
    _check_text(value, "requestId")
    return value


RequestId = Annotated[
    str, StringConstraints(max_length=REQUEST_ID_MAX), AfterValidator(_check_request_id)
]
Seq = Annotated[int, Field(ge=0, le=2**53)]
PositiveSeq = Annotated[int, Field(ge=1, le=2**53)]
# The raw list is bounded generously; the 100-participant rule applies after dedupe + caller.
ParticipantList = Annotated[list[Identifier], Field(max_length=1000)]
