"""Fuzzing: hostile WebSocket frames (hypothesis) and every service's OpenAPI (schemathesis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_helpers import SecureMesh, auth, connect, make_room, roundtrip, users

# documented closes: 1007 invalid UTF-8, 1009 too big, 4429 abusive
DOCUMENTED_CLOSES = {1007, 1009, 4429}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
ACTIONS = st.sampled_from(["create_room", "create_message", "sync", "refresh", "nope", 7, None])


@st.composite
def action_frames(draw: st.DrawFn) -> dict[str, Any]:
    """Frames that look like actions, with fields of any type and size."""
    fields = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "roomId",
                    "messageId",
                    "content",
                    "senderId",
                    "createdAt",
                    "participants",
                    "rooms",
                    "token",
                    "requestId",
                ]
            ),
            json_values | st.text(min_size=1000, max_size=5000),
            max_size=6,
        )
    )
    return {"action": draw(ACTIONS), **fields}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


hostile = st.one_of(
    json_values.map(json.dumps),
    action_frames().map(json.dumps),
    st.text(max_size=300),
    st.integers(min_value=10, max_value=100_000).map(deep),
    st.integers(min_value=1, max_value=400).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.just("9" * 5000),
    st.just(json.dumps({"action": "sync", "rooms": {"r": 10**30}})),
    st.binary(max_size=300),
    st.binary(min_size=1, max_size=50).map(lambda b: b"\xff\xfe" + b),  # invalid UTF-8 as text
    st.integers(min_value=70_000, max_value=300_000).map(lambda n: "x" * n),
)


class Fuzzer:
    """One connection that is replaced whenever the server closes it (documented codes only)."""

    def __init__(self, url: str, user_id: str) -> None:
        self.url = url
        self.user_id = user_id
        self.ws: websockets.ClientConnection | None = None
        self.closes: list[int] = []

    async def send(self, frame: str | bytes, invalid_text: bool) -> None:
        if self.ws is None:
            self.ws = await websockets.connect(self.url, max_size=2**22, open_timeout=10)
        try:
            if invalid_text:
                assert isinstance(frame, bytes)
                await self.ws.send(frame, text=True)  # a text frame that is not UTF-8
            else:
                await self.ws.send(frame)
            async with asyncio.timeout(10):
                reply = json.loads(await self.ws.recv())
            assert reply.get("type") in ("error", "synced", "room_created", "refreshed"), reply
        except websockets.ConnectionClosed:
            code = self.ws.close_code
            assert code in DOCUMENTED_CLOSES, code
            self.closes.append(code)
            self.ws = None


@pytest.fixture
async def bystander(secure: SecureMesh) -> Any:
    """Another user with a room, connected to the same node as the fuzzer."""
    fuzz, other = await users(secure.mesh, "Fuzz", "Bystander")
    client = await connect(secure.ws_url(0, other["token"]), other["id"])
    room = await make_room(client, [])
    yield fuzz, client, room
    await client.close()


async def test_hostile_frames_answered_node_alive_others_unaffected(
    secure: SecureMesh, bystander: Any
) -> None:
    """Each hostile frame gets an error frame or a documented close; others keep working."""
    fuzz, other, room = bystander
    fuzzer = Fuzzer(secure.ws_url(0, fuzz["token"]), fuzz["id"])
    loop = asyncio.get_running_loop()

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(frame=hostile)
    def run(frame: str | bytes) -> None:
        invalid = isinstance(frame, bytes) and frame.startswith(b"\xff\xfe")
        asyncio.run_coroutine_threadsafe(fuzzer.send(frame, invalid), loop).result(30)

    await asyncio.to_thread(run)
    print(f"\nfuzz closes: {fuzzer.closes}")
    assert secure.alive()
    await roundtrip(other)
    rid = "after-fuzz"
    await other.send(
        {
            "action": "create_message",
            "roomId": room["id"],
            "messageId": rid,
            "content": "ok",
            "senderId": other.user_id,
            "createdAt": "2024-06-16T12:00:00Z",
            "requestId": rid,
        }
    )
    done = await other.wait_for(lambda f: f.get("requestId") == rid)
    assert done["type"] == "message_created"
    if fuzzer.ws is not None:
        with contextlib.suppress(Exception):
            await fuzzer.ws.close()


async def test_invalid_utf8_closes_1007(secure: SecureMesh) -> None:
    """A text frame that is not UTF-8 closes the connection with 1007."""
    (fuzz,) = await users(secure.mesh, "Utf8")
    async with websockets.connect(secure.ws_url(1, fuzz["token"])) as ws:
        await ws.send(b"\xff\xfe\xfd", text=True)
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(10):
                await ws.recv()
        assert ws.close_code == 1007


async def test_lone_surrogates_in_json_bodies_are_400_not_5xx(secure: SecureMesh) -> None:
    """`"\\ud800"` is valid JSON but not Unicode text: every HTTP body field that takes text
    refuses it with its code (before, the store client's encoder failed: 503)."""
    alice, bob = await users(secure.mesh, "Surrogate", "Bystander")
    client = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    try:
        room = await make_room(client, [bob["id"]])
    finally:
        await client.close()
    json_type = {"content-type": "application/json"}
    cases = [
        (f"{secure.users.url}/users", b'{"name": "\\ud800"}', {}, "invalid_name"),
        (
            f"{secure.users.url}/users",
            b'{"name": "A", "avatar": "https://x/\\udfff"}',
            {},
            "invalid_avatar",
        ),
        (
            f"{secure.edges[0].url}/rooms/{room['id']}/messages",
            b'{"messageId": "m-sur", "content": "x\\udfff", "createdAt": "2026-01-01T00:00:00Z"}',
            auth(alice["token"]),
            "invalid_content",
        ),
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        for url, body, headers, code in cases:
            r = await http.post(url, content=body, headers={**json_type, **headers})
            assert r.status_code == 400, (url, r.status_code, r.text)
            assert r.json()["error"]["code"] == code, r.text
    assert secure.alive()


# --- schemathesis ---------------------------------------------------------------------------


# endless streams cannot be called and checked as one response (the SSE tests cover /events)
STREAMS = {"/events"}


def _schemathesis_run(base_url: str, token: str) -> list[str]:
    """Every operation of a service's OpenAPI with generated input: no 5xx, schema-conformant."""
    import schemathesis
    from hypothesis import settings as hsettings
    from schemathesis import checks as st_checks

    # the contract's promises: no 5xx, documented status codes, content types and schemas
    CHECKS = [
        st_checks.not_a_server_error,
        st_checks.status_code_conformance,
        st_checks.content_type_conformance,
        st_checks.response_schema_conformance,
        st_checks.response_headers_conformance,
    ]

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in STREAMS:
            continue
        strategy = operation.as_strategy()

        @hsettings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=strategy)
        def check(case: Any) -> None:
            case.headers = {**(case.headers or {}), **auth(token)}
            response = case.call(base_url=base_url, timeout=10)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            case.validate_response(response, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, report all at once
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:2000])
    return failures


@pytest.mark.parametrize("service", ["users", "rooms", "history", "edge"])
async def test_openapi_no_5xx_and_schema_conformant(secure: SecureMesh, service: str) -> None:
    """schemathesis over the service's OpenAPI: no 5xx, every response matches its schema."""
    (caller,) = await users(secure.mesh, "Schema")
    proc = {
        "users": secure.users,
        "rooms": secure.rooms,
        "history": secure.history,
        "edge": secure.edges[0],
    }[service]
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{proc.url}/openapi.json")).status_code == 200
    failures = await asyncio.to_thread(_schemathesis_run, proc.url, caller["token"])
    assert not failures, "\n\n".join(failures)
    assert secure.alive()
