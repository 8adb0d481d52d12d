"""Field rules of CONTRACT.md section 3 as the contract models enforce them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

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


def test_the_published_schemas_agree_with_the_validators() -> None:
    """The JSON schemas in OpenAPI and AsyncAPI never refuse what the server takes (so a
    generated client can send it), and refuse what breaks a rule they state (length, id
    pattern, sync keys, the avatar's scheme). jsonschema-rs is the validator schemathesis
    uses."""
    import jsonschema_rs

    from contracts.rest import SendMessageRequest

    message = {"messageId": "m1", "createdAt": "2024-06-16T12:36:10.000Z"}
    cases: list[tuple[type[Any], dict[str, Any], bool]] = [
        *[
            (SendMessageRequest, {**message, "content": text}, True)
            for text in ("x", "\ufeff", "\U0001f600" * 4000, "€" * 4000, " x ")
        ],
        (SendMessageRequest, {**message, "content": "x" * 4001}, False),
        (SendMessageRequest, {**message, "content": ""}, False),
        *[
            (SendMessageRequest, {**message, "content": "x", "messageId": bad}, False)
            for bad in ("", "a b", "m1\n", "a" * 129)
        ],
        (SendMessageRequest, {**message, "content": "x", "messageId": "a:b.c-d_" * 16}, True),
        (CreateUserRequest, {"name": "Ann", "avatar": "HTTPS://例え.jp/ä"}, True),
        (CreateUserRequest, {"name": "\U0001f600" * 64}, True),
        (CreateUserRequest, {"name": "Ann", "avatar": "ftp://example.com/a.png"}, False),
        (SyncAction, {"action": "sync", "rooms": {"room_1": 3}}, True),
        (SyncAction, {"action": "sync", "rooms": {"bad key": 3}}, False),
    ]
    for model, body, valid in cases:
        try:
            model.model_validate(body)
            server = True
        except ValidationError:
            server = False
        schema = jsonschema_rs.is_valid(model.model_json_schema(), body)
        assert (server, schema) == (valid, valid), (model.__name__, body)
