"""Integration tests of the users service against real NATS and store servers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contracts import subjects
from contracts.bus import GetUserQuery, GetUserReply, UserCreated
from contracts.rest import User
from infra.auth import TokenService
from infra.store import open_dynamo
from mesh.testing import ServiceLauncher
from users_service.adapters.store import PARTITION, DynamoUserStore, UserAlreadyExistsError
from users_service.domain import encode_cursor
from users_service.settings import Settings

pytestmark = pytest.mark.integration

SEED_BODY = {"name": "Alice", "avatar": "https://example.com/avatar/alice.png"}


async def create(client: httpx.AsyncClient, name: str = "Alice", **extra: Any) -> dict[str, Any]:
    answer = await client.post("/users", json={"name": name, **extra})
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(answer: httpx.Response, status: int, code: str | None = None) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str)
    assert isinstance(body["error"]["message"], str)
    if code is not None:
        assert body["error"]["code"] == code, body


def next_link(answer: httpx.Response) -> str | None:
    link: str | None = answer.headers.get("link")
    if link is None:
        return None
    assert link.startswith("<")
    assert link.endswith('>; rel="next"')
    return link[1 : -len('>; rel="next"')]


async def test_a_retried_put_that_was_applied_is_not_a_taken_id(
    users_settings: Settings,
) -> None:
    """The store client retries a put whose answer was lost; when the first attempt was
    applied the retry is refused by the condition. That must count as stored (else create_user
    stores the user again under a new id); another user under the id is still refused."""
    async with open_dynamo(users_settings) as db:
        store = DynamoUserStore(db, users_settings.users_table)
        user = User(id="user_00000000000000000RETRIED", name="Retried", avatar=None)
        created_at = "2026-12-04T10:00:00.000Z"
        try:
            await store.add(user, created_at)  # the first attempt, applied
            await store.add(user, created_at)  # its retry: no error
            assert await store.get(user.id) == user
            with pytest.raises(UserAlreadyExistsError):
                await store.add(User(id=user.id, name="Someone else", avatar=None), created_at)
            with pytest.raises(UserAlreadyExistsError):
                await store.add(user, "2026-12-04T10:00:01.000Z")  # same name, later: not ours
        finally:  # the listing tests share the table
            await db.delete_item(
                TableName=users_settings.users_table,
                Key={"pk": {"S": PARTITION}, "sk": {"S": user.id}},
            )


async def test_create_user_answers_the_seed_shape_plus_token(
    client: httpx.AsyncClient, tokens: TokenService
) -> None:
    """POST /users with the seed's payload answers 201 with the seed's user plus a token."""
    answer = await client.post("/users", json=SEED_BODY)
    assert answer.status_code == 201
    body = answer.json()
    assert set(body) == {"id", "name", "avatar", "token"}
    assert body["name"] == "Alice"
    assert body["avatar"] == SEED_BODY["avatar"]
    assert body["id"].startswith("user_")
    assert tokens.verify(body["token"]).user_id == body["id"]


async def test_create_user_trims_and_omits_missing_avatar(client: httpx.AsyncClient) -> None:
    """The name is stored trimmed and an unset avatar is absent from every answer."""
    created = await create(client, "  Bob  ")
    assert created["name"] == "Bob"
    assert "avatar" not in created
    fetched = await client.get(f"/users/{created['id']}", headers=auth(created["token"]))
    assert fetched.json() == {"id": created["id"], "name": "Bob"}


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "invalid_json"),
        (b'{"name": "Al', "invalid_json"),
        (b"[]", None),
        (b'[{"name": "Alice"}]', None),
        (b"{}", "invalid_name"),
        (b'{"name": ""}', "invalid_name"),
        (b'{"name": "   "}', "invalid_name"),
        (json.dumps({"name": "x" * 10_000}).encode(), "invalid_name"),
        (b'{"name": 42}', "invalid_name"),
        (b'{"name": null}', "invalid_name"),
        (b'{"name": "a\\u0000b"}', "invalid_name"),
        (b'{"name": "Al", "avatar": "javascript:alert(1)"}', "invalid_avatar"),
        (b'{"name": "Al", "avatar": "ftp://example.com/a.png"}', "invalid_avatar"),
        (b'{"name": "Al", "avatar": 7}', "invalid_avatar"),
        (json.dumps({"name": "Al", "avatar": "https://e.com/" + "a" * 3000}).encode(), None),
        (b"", None),
        (b"null", None),
    ],
)
async def test_bad_create_user_bodies_are_400_with_the_error_shape(
    client: httpx.AsyncClient, content: bytes, code: str | None
) -> None:
    """Every malformed POST /users body is a 400 with the contract's error body."""
    answer = await client.post(
        "/users", content=content, headers={"Content-Type": "application/json"}
    )
    assert_error(answer, 400, code)


async def test_content_types(client: httpx.AsyncClient) -> None:
    """A JSON body without Content-Type is accepted; a body declared as another type is a 400."""
    plain = await client.post("/users", content=b'{"name": "NoType"}')
    assert plain.status_code == 201, plain.text
    assert plain.json()["name"] == "NoType"
    broken = await client.post("/users", content=b"{nope")
    assert_error(broken, 400, "invalid_json")
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        answer = await client.post(
            "/users", content=b'{"name": "A"}', headers={"Content-Type": content_type}
        )
        assert_error(answer, 400)
    bad_utf8 = await client.post(
        "/users", content=b'{"name": "\xff"}', headers={"Content-Type": "application/json"}
    )
    assert_error(bad_utf8, 400)


async def test_body_over_64_kib_is_413(client: httpx.AsyncClient) -> None:
    """A request body over the limit is refused with 413 and the JSON error body."""
    body = json.dumps({"name": "Al", "pad": "x" * 70_000}).encode()
    answer = await client.post("/users", content=body, headers={"Content-Type": "application/json"})
    assert_error(answer, 413, "payload_too_large")


async def test_calls_without_a_valid_token_are_401(client: httpx.AsyncClient) -> None:
    """GET /users, GET /users/{id} and POST /token refuse a missing or bad token with 401."""
    for method, path in (("GET", "/users"), ("GET", "/users/user_1"), ("POST", "/token")):
        assert_error(await client.request(method, path), 401, "unauthorized")
        bad = await client.request(method, path, headers=auth("not.a.token"))
        assert_error(bad, 401, "unauthorized")
        basic = await client.request(method, path, headers={"Authorization": "Basic abc"})
        assert_error(basic, 401, "unauthorized")


async def test_an_expired_token_is_401(client: httpx.AsyncClient, tokens: TokenService) -> None:
    """A token past its expiry (and the leeway) is refused on every authenticated call."""
    created = await create(client, "Expiring")
    old, _ = tokens.issue(created["id"], now=time.time() - 2 * 24 * 3600)
    for method, path in (("GET", "/users"), ("POST", "/token")):
        assert_error(await client.request(method, path, headers=auth(old)), 401, "token_expired")


async def test_a_token_of_another_secret_is_401(client: httpx.AsyncClient) -> None:
    """A token signed with another secret is refused."""
    forged, _ = TokenService("other-secret-" + "z" * 40, "chat", 3600, 0).issue("user_x")
    assert_error(await client.get("/users", headers=auth(forged)), 401, "unauthorized")


async def test_get_user_by_id(client: httpx.AsyncClient) -> None:
    """GET /users/{id} answers a known user and 404 with the error shape for an unknown one."""
    alice = await create(client, "Alice", avatar="https://example.com/a.png")
    bob = await create(client, "Bob")
    answer = await client.get(f"/users/{alice['id']}", headers=auth(bob["token"]))
    assert answer.status_code == 200
    assert answer.json() == {
        "id": alice["id"],
        "name": "Alice",
        "avatar": "https://example.com/a.png",
    }
    for missing in ("user_00000000000000000000000000", "nope", "x" * 3000):
        assert_error(await client.get(f"/users/{missing}", headers=auth(bob["token"])), 404)
    unknown = await client.get("/users/user_unknown", headers=auth(bob["token"]))
    assert_error(unknown, 404, "not_found")


async def test_list_users_excludes_the_caller_and_lists_new_users_at_once(
    client: httpx.AsyncClient,
) -> None:
    """A user is listed right after its 201; the caller never is."""
    me = await create(client, "Me")
    other = await create(client, "Other")
    seen: list[dict[str, Any]] = []
    url: str | None = "/users?limit=200"
    while url:
        answer = await client.get(url, headers=auth(me["token"]))
        assert answer.status_code == 200
        seen.extend(answer.json())
        url = next_link(answer)
    ids = [u["id"] for u in seen]
    assert other["id"] in ids
    assert me["id"] not in ids
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))
    assert all(set(u) <= {"id", "name", "avatar"} for u in seen)


async def test_list_users_pages_with_link_across_three_pages(client: httpx.AsyncClient) -> None:
    """limit=2 over five other users gives pages of 2, 2, 1; each Link leads to the next."""
    anchor = await create(client, "Anchor")
    b1 = await create(client, "B1")
    b2 = await create(client, "B2")
    me = await create(client, "Me")
    b3 = await create(client, "B3")
    b4 = await create(client, "B4", avatar="https://example.com/b4.png")
    b5 = await create(client, "B5")
    url: str | None = f"/users?limit=2&cursor={encode_cursor(anchor['id'])}"
    pages: list[list[str]] = []
    links: list[str] = []
    while url:
        answer = await client.get(url, headers=auth(me["token"]))
        assert answer.status_code == 200, answer.text
        pages.append([u["id"] for u in answer.json()])
        url = next_link(answer)
        if url:
            links.append(url)
    assert pages == [[b1["id"], b2["id"]], [b3["id"], b4["id"]], [b5["id"]]]
    assert len(links) == 2
    for link in links:
        parsed = httpx.URL(link)
        assert parsed.is_absolute_url
        assert parsed.params["limit"] == "2"
        assert parsed.params["cursor"]


async def test_list_users_ends_when_only_the_caller_is_left(client: httpx.AsyncClient) -> None:
    """When the caller is the only user after a full page, that page has no Link."""
    anchor = await create(client, "Anchor")
    c1 = await create(client, "C1")
    c2 = await create(client, "C2")
    me = await create(client, "Me")
    answer = await client.get(
        f"/users?limit=2&cursor={encode_cursor(anchor['id'])}", headers=auth(me["token"])
    )
    assert [u["id"] for u in answer.json()] == [c1["id"], c2["id"]]
    assert "link" not in answer.headers


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "invalid_limit"),
        ("limit=201", "invalid_limit"),
        ("limit=-5", "invalid_limit"),
        ("limit=abc", "invalid_limit"),
        ("limit=1.5", "invalid_limit"),
        ("cursor=%21%21", "invalid_cursor"),
        ("cursor=bm9wZQ", "invalid_cursor"),
        ("cursor=" + "a" * 1000, "invalid_cursor"),
    ],
)
async def test_bad_paging_parameters_are_400(
    client: httpx.AsyncClient, query: str, code: str
) -> None:
    """A limit outside 1..200 or a forged cursor is a 400 with its code."""
    me = await create(client, "Pager")
    assert_error(await client.get(f"/users?{query}", headers=auth(me["token"])), 400, code)


async def test_token_refresh_gives_a_working_token(
    client: httpx.AsyncClient, tokens: TokenService
) -> None:
    """POST /token answers a new token for the same user, usable on other calls."""
    me = await create(client, "Refresher")
    answer = await client.post("/token", headers=auth(me["token"]))
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"token", "expiresAt"}
    assert tokens.verify(body["token"]).user_id == me["id"]
    assert body["expiresAt"].endswith("Z")
    listed = await client.get("/users", headers=auth(body["token"]))
    assert listed.status_code == 200


async def test_user_created_event_is_published(client: httpx.AsyncClient, nc: NATS) -> None:
    """UserCreated (schemaVersion 1) reaches NATS subscribers of its subject."""
    received: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await received.put(msg)

    await nc.subscribe(subjects.USER_CREATED, cb=on_msg)
    await nc.flush()
    created = await create(client, "Evented", avatar="https://example.com/e.png")
    while True:
        msg = await asyncio.wait_for(received.get(), timeout=10)
        raw = json.loads(msg.data)
        if raw["user"]["id"] == created["id"]:
            break
    assert raw["schemaVersion"] == 1
    assert raw["event"] == "UserCreated"
    event = UserCreated.model_validate_json(msg.data)
    assert event.user.name == "Evented"
    assert event.user.avatar == "https://example.com/e.png"
    assert msg.headers is not None
    assert msg.headers.get("Nats-Msg-Id") == f"UserCreated:{created['id']}"


async def test_user_created_is_kept_in_the_events_stream(
    client: httpx.AsyncClient, nc: NATS
) -> None:
    """The CHAT_EVENTS stream stores the event (the rooms read model consumes it from there)."""
    created = await create(client, "Streamed")
    js = nc.jetstream()
    info = await js.stream_info(subjects.EVENTS_STREAM)
    msg = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.USER_CREATED)
    assert info.state.messages >= 1
    assert msg.data is not None
    assert json.loads(msg.data)["user"]["id"] == created["id"]


async def test_get_users_request_reply(client: httpx.AsyncClient, nc: NATS) -> None:
    """GET_USERS answers the known users among the asked ids; unknown ids are absent."""
    alice = await create(client, "Alice")
    bob = await create(client, "Bob", avatar="https://example.com/b.png")
    query = GetUserQuery(userIds=[alice["id"], "user_unknown", bob["id"]], correlationId="q1")
    msg = await nc.request(subjects.GET_USERS, query.model_dump_json().encode(), timeout=5)
    reply = GetUserReply.model_validate_json(msg.data)
    assert reply.schemaVersion == 1
    assert reply.correlationId == "q1"
    assert [(u.id, u.name, u.avatar) for u in reply.users] == [
        (alice["id"], "Alice", None),
        (bob["id"], "Bob", "https://example.com/b.png"),
    ]


async def test_get_users_with_a_bad_payload_answers_an_empty_list(nc: NATS) -> None:
    """A malformed GET_USERS request gets an empty list and the responder keeps working."""
    for payload in (b"garbage", b"[]", b'{"userIds": 5}'):
        msg = await nc.request(subjects.GET_USERS, payload, timeout=5)
        assert GetUserReply.model_validate_json(msg.data).users == []
    ok = await nc.request(subjects.GET_USERS, GetUserQuery(userIds=[]).model_dump_json().encode())
    assert GetUserReply.model_validate_json(ok.data).users == []


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    """/healthz and /readyz answer 200 when the store and NATS are reachable."""
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text


async def test_openapi_documents_the_contract(client: httpx.AsyncClient) -> None:
    """The OpenAPI document is titled, carries the seed's examples and the error bodies."""
    doc = (await client.get("/openapi.json")).json()
    assert doc["info"]["title"] == "chat users"
    text = json.dumps(doc)
    assert "https://example.com/avatar/alice.png" in text
    post = doc["paths"]["/users"]["post"]
    assert {"201", "400", "413"} <= set(post["responses"])
    assert {"200", "400", "401", "404"} <= set(doc["paths"]["/users/{user_id}"]["get"]["responses"])
    assert "401" in doc["paths"]["/users"]["get"]["responses"]
    assert "401" in doc["paths"]["/token"]["post"]["responses"]
    assert "ErrorBody" in doc["components"]["schemas"]
    assert '"422"' not in text
    listed = doc["paths"]["/users"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listed["example"][1]["name"] == "Bob"


async def test_security_headers_and_unknown_routes(client: httpx.AsyncClient) -> None:
    """Answers carry security headers; an unknown route is a JSON 404."""
    answer = await client.get("/nowhere")
    assert_error(answer, 404, "not_found")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert_error(await client.put("/users"), 405, "method_not_allowed")


def test_service_process_serves_and_is_ready(launcher: ServiceLauncher) -> None:
    """`python -m users_service` starts, is ready, creates and lists users over real HTTP."""
    service = launcher.start("users", "users_service")
    with httpx.Client(base_url=service.url, timeout=10) as http:
        assert http.get("/readyz").status_code == 200
        first = http.post("/users", json=SEED_BODY)
        assert first.status_code == 201
        second = http.post("/users", json={"name": "Bob"}).json()
        listed = http.get("/users?limit=200", headers=auth(second["token"]))
        assert listed.status_code == 200
        assert first.json()["id"] in [u["id"] for u in listed.json()]
