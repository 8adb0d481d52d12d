"""Field rules of CONTRACT.md section 3 as the contract models enforce them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from contracts.common import check_not_in_future, parse_timestamp
from contracts.errors import ErrorCode, code_for_location
from contracts.rest import CreateUserRequest
from contracts.ws import CLIENT_ACTIONS, SyncAction


@pytest.mark.parametrize(
    "name", ["", "   ", "x" * 65, "a\x00b", "line\nbreak", "x" * 10_000, "\ud800", "a\udfffb"]
)
def test_bad_names_refused(name: str) -> None:
    """Empty, blank, too long and control-character names are refused."""
    with pytest.raises(ValidationError):
        CreateUserRequest.model_validate({"name": name})


def test_name_trimmed_and_number_refused() -> None:
    """Names are trimmed; a number is not a name."""
    assert CreateUserRequest.model_validate({"name": "  Bob  "}).name == "Bob"
    assert CreateUserRequest.model_validate({"name": "é" * 64}).name == "é" * 64
    with pytest.raises(ValidationError):
        CreateUserRequest.model_validate({"name": 42})


@pytest.mark.parametrize(
    "avatar",
    [
        "javascript:alert(1)",
        "ftp://x/y",
        "http://",
        "https://a b/c",
        "data:image/png;base64,AA",
        "https://x/" + "a" * 2048,
        "https://x/\ud800",
    ],
)
def test_bad_avatars_refused(avatar: str) -> None:
    """Only http(s) URLs of at most 2048 characters are avatars."""
    with pytest.raises(ValidationError):
        CreateUserRequest.model_validate({"name": "A", "avatar": avatar})


def test_content_rules() -> None:
    """Content is 1-4000 characters (not bytes), not only whitespace."""
    base = {
        "action": "create_message",
        "roomId": "room_1",
        "messageId": "m1",
        "senderId": "u1",
        "createdAt": "2024-06-16T12:36:10.000Z",
    }
    CLIENT_ACTIONS.validate_python({**base, "content": "€" * 4000})
    for bad in ("", "   \n", "x" * 4001, "x\udfff", "\ud83d"):  # lone surrogates too
        with pytest.raises(ValidationError):
            CLIENT_ACTIONS.validate_python({**base, "content": bad})
    for bad_id in ("", "a" * 129, "has space", "slash/no", "m1\n", "\nm1"):
        with pytest.raises(ValidationError):
            CLIENT_ACTIONS.validate_python({**base, "content": "x", "messageId": bad_id})
    with pytest.raises(ValidationError):
        CLIENT_ACTIONS.validate_python({**base, "content": "x", "requestId": "r\ud800"})
    # a real surrogate pair decodes to one character: fine
    assert CLIENT_ACTIONS.validate_python({**base, "content": "\U0001f600"})


def test_timestamps() -> None:
    """createdAt needs a time zone and may be at most 5 minutes ahead."""
    parse_timestamp("2024-06-16T12:34:56.789Z")
    parse_timestamp("2024-06-16T12:34:56+02:00")
    with pytest.raises(ValueError, match="time zone"):
        parse_timestamp("2024-06-16T12:34:56")
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_timestamp("yesterday")
    now = datetime(2024, 1, 1, tzinfo=UTC)
    check_not_in_future((now + timedelta(minutes=4)).isoformat(), now)
    with pytest.raises(ValueError, match="future"):
        check_not_in_future((now + timedelta(minutes=6)).isoformat(), now)


def test_sync_and_unknown_action() -> None:
    """`sync` takes a map of seqs (empty is valid); an unknown action is refused."""
    action = CLIENT_ACTIONS.validate_python({"action": "sync", "rooms": {}})
    assert isinstance(action, SyncAction)
    with pytest.raises(ValidationError):
        CLIENT_ACTIONS.validate_python({"action": "sync", "rooms": {"r": -1}})
    with pytest.raises(ValidationError):
        CLIENT_ACTIONS.validate_python({"action": "dance"})


def test_error_codes_by_field() -> None:
    """Validation errors map to the field's specific code."""
    assert code_for_location(("body", "name")) == ErrorCode.INVALID_NAME
    assert code_for_location(("create_message", "content")) == ErrorCode.INVALID_CONTENT
    assert code_for_location(("body",)) == ErrorCode.VALIDATION_ERROR
