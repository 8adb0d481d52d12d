"""The seed's JSON examples are accepted by our models, and our answers keep the seed's shape."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from contracts.rest import CreateUserRequest, Message, Room, User, UserWithToken
from contracts.ws import (
    CLIENT_ACTIONS,
    SERVER_FRAMES,
    CreateMessageAction,
    CreateRoomAction,
    MessageCreatedFrame,
    RoomCreatedFrame,
)

SEED_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "seed"


def _seed_text() -> str:
    files = sorted(SEED_DIR.glob("*.txt"))
    if not files:
        pytest.skip("the seed document is not beside the project")
    return files[0].read_text()


def _json_blocks(text: str) -> list[Any]:
    """Every top-level JSON value in the seed, `//` comments stripped."""
    cleaned = re.sub(r"(?<!:)//[^\n]*", "", text)  # comments, not URLs
    decoder = json.JSONDecoder()
    found: list[Any] = []
    i = 0
    while i < len(cleaned):
        if cleaned[i] in "[{":
            try:
                value, end = decoder.raw_decode(cleaned, i)
            except json.JSONDecodeError:
                i += 1
                continue
            found.append(value)
            i = end
        else:
            i += 1
    return found


def test_seed_has_the_examples_we_expect() -> None:
    """The seed yields the eight JSON examples it shows (users list, bodies, frames)."""
    blocks = _json_blocks(_seed_text())
    assert len(blocks) == 8


def test_every_seed_example_validates() -> None:
    """Each seed example is accepted by the model of the place it appears."""
    blocks = _json_blocks(_seed_text())
    users_list, create_user, user, messages, create_room, room_created, create_msg, msg_created = (
        blocks
    )
    for item in users_list:
        User.model_validate(item)
    CreateUserRequest.model_validate(create_user)
    User.model_validate(user)
    for item in messages:
        # the seed's history items predate `seq`: validate with the seq we add
        Message.model_validate({**item, "seq": 1})
    assert isinstance(CLIENT_ACTIONS.validate_python(create_room), CreateRoomAction)
    frame = SERVER_FRAMES.validate_python(room_created)
    assert isinstance(frame, RoomCreatedFrame)
    assert isinstance(CLIENT_ACTIONS.validate_python(create_msg), CreateMessageAction)
    frame = SERVER_FRAMES.validate_python(
        {**msg_created, "message": {**msg_created["message"], "seq": 3}}
    )
    assert isinstance(frame, MessageCreatedFrame)


def _keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(v) for v in value[:1]]
    return type(value).__name__


def test_our_answers_carry_every_seed_field_in_the_same_format() -> None:
    """Re-encoding the seed's answers gives back every field exactly (timestamps as sent)."""
    blocks = _json_blocks(_seed_text())
    _, _, user, messages, _, room_created, _, msg_created = blocks
    ours_user = UserWithToken.model_validate({**user, "token": "t"}).model_dump(exclude_none=True)
    for key, value in user.items():
        assert ours_user[key] == value
    for item in messages:
        ours = Message.model_validate({**item, "seq": 9}).model_dump()
        assert {k: ours[k] for k in item} == item
    room = Room.model_validate(room_created["room"]).model_dump()
    assert room == room_created["room"]
    frame = MessageCreatedFrame.model_validate(
        {**msg_created, "message": {**msg_created["message"], "seq": 3}}
    ).model_dump(exclude_none=True)
    assert {k: frame["message"][k] for k in msg_created["message"]} == msg_created["message"]
    assert frame["message"]["createdAt"] == "2024-06-16T12:36:10.000Z"
