"""docs/asyncapi.json is generated from the contracts package and matches the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from contracts import asyncapi, bus

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_committed_document_matches_the_code() -> None:
    """Regenerating (`python -m contracts.asyncapi`) gives exactly the committed document."""
    generated = subprocess.run(
        [sys.executable, "-m", "contracts.asyncapi"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = DOC.read_text()
    assert generated == committed, (
        "docs/asyncapi.json is out of date with contracts/: run `make asyncapi` and commit it"
    )


def test_document_is_asyncapi_3_and_every_reference_resolves() -> None:
    """AsyncAPI 3.0 shape: refs resolve, operations use their channel's messages, address
    parameters are declared."""
    doc = json.loads(DOC.read_text())
    assert doc["asyncapi"] == "3.0.0"
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "([^"]+)"', text)):
        assert _resolve(doc, ref) is not None, ref
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel_ref = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), name
    for name, channel in doc["channels"].items():
        params = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert params == set(channel.get("parameters", {})), name


def test_every_bus_model_and_frame_is_documented() -> None:
    """Each bus payload (Envelope subclass), client action and server frame has a message."""
    doc = asyncapi.build()
    messages = set(doc["components"]["messages"])
    envelopes = {
        name
        for name, value in vars(bus).items()
        if isinstance(value, type) and issubclass(value, bus.Envelope) and value is not bus.Envelope
    }
    assert envelopes <= messages
    frames = {m.__name__ for m in asyncapi.CLIENT_ACTIONS + asyncapi.SERVER_FRAMES}
    assert frames <= messages
    assert {"CreateRoomAction", "SyncAction", "MessageCreatedFrame", "SyncedFrame"} <= frames
    for name in envelopes:  # every bus payload carries the schema version and correlation id
        props = doc["components"]["schemas"][name]["properties"]
        assert "schemaVersion" in props, name
        assert "correlationId" in props, name


def test_the_fields_that_name_a_payload_are_required() -> None:
    """`type`, `event`, `command` and `schemaVersion` are on every payload that has them (the
    models give them defaults, which would otherwise read as optional); the input rules of
    ids and content are in the schemas."""
    schemas = asyncapi.build()["components"]["schemas"]
    for name, schema in schemas.items():
        for field, prop in schema.get("properties", {}).items():
            if "const" in prop:
                assert field in schema.get("required", []), (name, field)
    assert {"type", "message"} <= set(schemas["MessageCreatedFrame"]["required"])
    assert {"event", "schemaVersion"} <= set(schemas["MessageCreated"]["required"])
    action = schemas["CreateMessageAction"]["properties"]
    assert action["content"]["maxLength"] == 4000
    assert action["messageId"]["pattern"] == "^[A-Za-z0-9_.:\\-]{1,128}$"
