"""The web client in a real browser: two people on two edge nodes, history, an edge restart."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, expect
from web_mesh import SCREENSHOTS, WebMesh

WAIT_MS = 20_000


@pytest.fixture
async def contexts(browser: Browser) -> AsyncIterator[list[BrowserContext]]:
    """Two separate browser profiles (two people), closed after the test."""
    made = [await browser.new_context(viewport={"width": 1100, "height": 720}) for _ in range(2)]
    try:
        yield made
    finally:
        for context in made:
            await context.close()


async def sign_up(context: BrowserContext, edge_url: str, name: str) -> Page:
    page = await context.new_page()
    await page.goto(f"{edge_url}/")
    await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator("#status")).to_have_attribute("data-state", "online", timeout=WAIT_MS)
    return page


async def me(page: Page) -> dict[str, Any]:
    saved: dict[str, Any] = await page.evaluate("JSON.parse(localStorage.getItem('chat.me'))")
    return saved


async def create_room_with(page: Page, other_name: str, screenshot: str = "") -> None:
    await page.get_by_role("button", name="New room").click()
    person = page.get_by_label(other_name, exact=True)
    await expect(person).to_be_visible(timeout=WAIT_MS)
    if screenshot:
        await page.screenshot(path=str(SCREENSHOTS / screenshot))
    await person.check()
    await page.get_by_role("button", name="Create room").click()
    try:
        await expect(page.locator("#room-title")).to_have_text(other_name, timeout=WAIT_MS)
    except AssertionError as exc:
        # what the dialog told the user says which side failed (its API error message)
        said = await page.locator("#new-room-error").text_content()
        raise AssertionError(f"the new room did not open; the dialog says {said!r}") from exc


async def open_room_named(page: Page, title: str) -> None:
    button = page.locator("#rooms button", has_text=title)
    await expect(button).to_be_visible(timeout=WAIT_MS)
    await button.click()
    await expect(page.locator("#room-title")).to_have_text(title)


async def say(page: Page, text: str) -> None:
    await page.get_by_role("textbox", name="Message").fill(text)
    await page.get_by_role("textbox", name="Message").press("Enter")


def message(page: Page, text: str, state: str = "success") -> Any:
    return page.locator(f'#messages .msg[data-state="{state}"]', has_text=text)


def names() -> tuple[str, str]:
    tag = secrets.token_hex(3)
    return f"Alice {tag}", f"Bob {tag}"


async def test_two_people_on_two_nodes_chat_and_history_survives_a_reload(
    web: WebMesh, contexts: list[BrowserContext]
) -> None:
    """Sign up on node a and b, create a room, chat both ways, reload (the open room opens
    again), page back through history."""
    alice_name, bob_name = names()
    bob = await sign_up(contexts[1], web.edges[1].url, bob_name)
    alice = await sign_up(contexts[0], web.edges[0].url, alice_name)
    await create_room_with(alice, bob_name)
    await open_room_named(bob, alice_name)

    await say(alice, "Hello Bob, from node a")
    await expect(message(bob, "Hello Bob, from node a")).to_be_visible(timeout=WAIT_MS)
    await expect(message(alice, "Hello Bob, from node a")).to_have_count(1)
    await say(bob, "Hi Alice, from node b")
    await expect(message(alice, "Hi Alice, from node b")).to_be_visible(timeout=WAIT_MS)
    # presence: each sees the other online
    await expect(alice.locator('#room-people .dot[data-online="true"]')).to_have_count(1)
    await expect(bob.locator('#room-people .dot[data-online="true"]')).to_have_count(1)
    await alice.screenshot(path=str(SCREENSHOTS / "chat.png"))

    # 120 more messages over the HTTP variant, then Bob reloads and pages back by scrolling up
    alice_me = await me(alice)
    room_id = await alice.evaluate("state.current")
    async with httpx.AsyncClient(timeout=30) as http:

        async def post(i: int) -> None:
            r = await http.post(
                f"{web.edges[0].url}/rooms/{room_id}/messages",
                json={
                    "messageId": str(uuid.uuid4()),
                    "content": f"bulk {i:03d}",
                    "createdAt": datetime.now(UTC).isoformat(),
                },
                headers={"authorization": f"Bearer {alice_me['token']}"},
            )
            assert r.status_code in (201, 202), r.text

        for start in range(0, 120, 20):
            await asyncio.gather(*(post(i) for i in range(start, start + 20)))
    await expect(bob.locator("#messages .msg")).to_have_count(122, timeout=WAIT_MS)

    await bob.reload()
    await expect(bob.locator("#status")).to_have_attribute("data-state", "online", timeout=WAIT_MS)
    # the room that was open is open again
    await expect(bob.locator("#room-title")).to_have_text(alice_name, timeout=WAIT_MS)
    await open_room_named(bob, alice_name)
    await expect(bob.locator("#messages .msg")).to_have_count(50, timeout=WAIT_MS)
    for expected in (100, 122):
        await bob.locator("#messages").evaluate("el => { el.scrollTop = 0; }")
        await expect(bob.locator("#messages .msg")).to_have_count(expected, timeout=WAIT_MS)
    await expect(message(bob, "Hello Bob, from node a")).to_be_visible()
    await expect(bob.locator("#messages .older")).to_have_text("Start of the conversation")
    await bob.screenshot(path=str(SCREENSHOTS / "history.png"))


async def test_page_recovers_after_its_edge_node_restarts(
    web: WebMesh, contexts: list[BrowserContext]
) -> None:
    """Node a stops: the page shows reconnecting, a send fails, missed messages come on return."""
    alice_name, bob_name = names()
    signup_page = await contexts[0].new_page()
    await signup_page.goto(f"{web.edges[0].url}/")
    await expect(signup_page.get_by_label("Your name")).to_be_visible()
    await signup_page.screenshot(path=str(SCREENSHOTS / "signup.png"))
    await signup_page.close()
    bob = await sign_up(contexts[1], web.edges[1].url, bob_name)
    alice = await sign_up(contexts[0], web.edges[0].url, alice_name)
    await create_room_with(alice, bob_name, screenshot="new-room.png")
    await open_room_named(bob, alice_name)
    await say(bob, "before the restart")
    await expect(message(alice, "before the restart")).to_be_visible(timeout=WAIT_MS)

    await asyncio.to_thread(web.stop_edge, 0)
    await expect(alice.locator("#status")).to_have_attribute("data-state", "reconnecting")
    await say(alice, "sent while node a is down")
    await expect(message(alice, "sent while node a is down", "sending")).to_be_visible()
    await expect(message(alice, "sent while node a is down", "failed")).to_be_visible(
        timeout=WAIT_MS
    )
    await alice.screenshot(path=str(SCREENSHOTS / "failed.png"))
    await say(bob, "missed 1")
    await say(bob, "missed 2")
    await expect(message(bob, "missed 2")).to_be_visible(timeout=WAIT_MS)

    await asyncio.to_thread(web.start_edge, 0)
    await expect(alice.locator("#status")).to_have_attribute("data-state", "online", timeout=40_000)
    await expect(message(alice, "missed 1")).to_be_visible(timeout=WAIT_MS)
    await expect(message(alice, "missed 2")).to_be_visible()
    await alice.get_by_role("button", name="Retry sending this message").click()
    await expect(message(alice, "sent while node a is down")).to_have_count(1, timeout=WAIT_MS)
    await expect(message(bob, "sent while node a is down")).to_have_count(1, timeout=WAIT_MS)
    seqs = await alice.locator("#messages .msg").evaluate_all(
        "els => els.map(e => Number(e.dataset.seq))"
    )
    assert seqs == [1, 2, 3, 4]
    await say(alice, "and live again")
    await expect(message(bob, "and live again")).to_be_visible(timeout=WAIT_MS)


async def test_a_call_left_unanswered_fails_with_a_message(
    web: WebMesh, contexts: list[BrowserContext]
) -> None:
    """POST /rooms reaches rooms but its answer never reaches the page: after the page's request
    timeout (from /config) the dialog says so and the button works again; the next try sends the
    same Idempotency-Key and opens the room the first try made, not a second one."""
    alice_name, bob_name = names()
    bob = await sign_up(contexts[1], web.edges[1].url, bob_name)

    async def short_timeout(route: Route) -> None:
        response = await route.fetch()
        config = await response.json()
        assert config["requestTimeoutMs"] == 15_000  # the edge's default reaches the page
        await route.fulfill(response=response, json={**config, "requestTimeoutMs": 1_500})

    lost: list[dict[str, Any]] = []  # what rooms answered to the first try
    keys: list[str | None] = []

    async def answer_lost(route: Route) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        keys.append(await route.request.header_value("idempotency-key"))
        response = await route.fetch()  # rooms does create the room
        lost.append(await response.json())
        # ... and the page never hears of it (the route is left unanswered)

    async def watch(route: Route) -> None:
        if route.request.method == "POST":
            keys.append(await route.request.header_value("idempotency-key"))
        await route.continue_()

    await contexts[0].route("**/config", short_timeout)
    alice = await sign_up(contexts[0], web.edges[0].url, alice_name)
    await alice.route(f"{web.rooms}/rooms", answer_lost)
    await alice.get_by_role("button", name="New room").click()
    await alice.get_by_label(bob_name, exact=True).check()
    await alice.get_by_role("button", name="Create room").click()
    await expect(alice.locator("#new-room-error")).to_have_text(
        "The server did not answer in time; try again.", timeout=WAIT_MS
    )
    assert len(lost) == 1, lost
    assert lost[0]["id"].startswith("room_"), lost
    await expect(alice.get_by_role("button", name="Create room")).to_be_enabled()
    # the held request ended with the page's abort; from here on the page hears the answers
    await alice.unroute(f"{web.rooms}/rooms", answer_lost)
    await alice.route(f"{web.rooms}/rooms", watch)
    await alice.get_by_role("button", name="Create room").click()
    await expect(alice.locator("#room-title")).to_have_text(bob_name, timeout=WAIT_MS)
    assert len(keys) == 2, keys
    assert keys[0], keys
    assert keys[0] == keys[1], keys
    for page in (alice, bob):
        rooms = page.locator("#rooms button[data-room-id]")
        await expect(rooms).to_have_count(1, timeout=WAIT_MS)
        assert await rooms.get_attribute("data-room-id") == lost[0]["id"]


async def test_a_tab_left_open_renews_its_token_before_it_expires(
    web: WebMesh, contexts: list[BrowserContext]
) -> None:
    """The page renews its token ahead of its expiry (`POST /token`, then the socket's
    `refresh`, answered `refreshed`), so a tab left open for a day keeps its account and its
    connection: the page's clock is moved 23 h 51 min ahead (tokens last 24 h here)."""
    context = contexts[0]
    await context.clock.install()
    frames: list[str] = []
    errors: list[str] = []

    def watch(new_page: Page) -> None:
        new_page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(str(f))))
        new_page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    context.on("page", watch)
    alice_name, _ = names()
    page = await sign_up(context, web.edges[0].url, alice_name)
    first = (await me(page))["token"]
    await page.clock.fast_forward("23:51:00")
    for _ in range(200):  # up to 20 s
        if (await me(page))["token"] != first and any('"refreshed"' in f for f in frames):
            break
        await asyncio.sleep(0.1)
    renewed = await me(page)
    assert renewed["token"] != first, "the token was not renewed"
    assert any('"refreshed"' in f for f in frames), "the socket did not take the new token"
    await expect(page.locator("#status")).to_have_attribute("data-state", "online")
    async with httpx.AsyncClient() as http:  # the new token is a valid one of the same user
        answer = await http.post(
            f"{web.users}/token", headers={"authorization": f"Bearer {renewed['token']}"}
        )
    assert answer.status_code == 200, answer.text
    assert errors == []  # nothing failed on the way (not even a missing favicon)


async def test_a_message_that_failed_can_be_discarded_and_blank_ones_stay(
    web: WebMesh, contexts: list[BrowserContext]
) -> None:
    """A message whose frame never reaches the server fails after the page's wait and offers
    Retry and Discard; Discard removes it from the page. A blank message is not sent and
    stays in the box."""
    context = contexts[0]
    dropping = {"on": False}

    def relay(ws: Any) -> None:
        server = ws.connect_to_server()

        def to_server(message: str | bytes) -> None:
            if dropping["on"] and "create_message" in str(message):
                return  # lost on the way
            server.send(message)

        ws.on_message(to_server)

    await context.route_web_socket("**/ws?*", relay)
    await context.clock.install()
    alice_name, bob_name = names()
    async with httpx.AsyncClient() as http:
        made = await http.post(f"{web.users}/users", json={"name": bob_name})
        assert made.status_code == 201, made.text
    alice = await sign_up(context, web.edges[0].url, alice_name)
    await create_room_with(alice, bob_name)
    box = alice.get_by_role("textbox", name="Message")
    await box.fill("   ")
    await box.press("Enter")
    await expect(box).to_have_value("   ")
    await expect(alice.locator("#messages .msg")).to_have_count(0)
    dropping["on"] = True
    await say(alice, "this one is lost")
    await expect(message(alice, "this one is lost", "sending")).to_be_visible(timeout=WAIT_MS)
    await alice.clock.fast_forward(11_000)  # past the page's 10 s wait
    failed = message(alice, "this one is lost", "failed")
    await expect(failed).to_be_visible(timeout=WAIT_MS)
    await expect(failed.get_by_role("button", name="Retry sending this message")).to_be_visible()
    await failed.get_by_role("button", name="Discard this message").click()
    await expect(alice.locator("#messages .msg", has_text="this one is lost")).to_have_count(0)
    dropping["on"] = False
    await say(alice, "this one arrives")
    await expect(message(alice, "this one arrives")).to_be_visible(timeout=WAIT_MS)


async def test_the_page_counts_characters_as_the_server_does(
    web: WebMesh, contexts: list[BrowserContext]
) -> None:
    """Limits count characters, not UTF-16 units: a name of 64 emoji and a message of 4,000
    are taken and stored whole; one more is refused in the page with the reason, unsent."""
    smile = "\U0001f600"  # two UTF-16 units: an input's maxlength would count it twice
    page = await contexts[0].new_page()
    await page.goto(f"{web.edges[0].url}/")
    await page.get_by_label("Your name").fill(smile * 65)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator("#signup-error")).to_contain_text("at most 64 characters")
    await expect(page.locator("#status")).not_to_have_attribute("data-state", "online")
    await page.get_by_label("Your name").fill(smile * 64)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator("#status")).to_have_attribute("data-state", "online", timeout=WAIT_MS)
    alice = await me(page)
    assert alice["name"] == smile * 64
    _, bob_name = names()
    async with httpx.AsyncClient() as http:
        made = await http.post(f"{web.users}/users", json={"name": bob_name})
        assert made.status_code == 201, made.text
        await create_room_with(page, bob_name)
        box = page.get_by_role("textbox", name="Message")
        await box.fill(smile * 4001)
        await box.press("Enter")
        said = await box.evaluate("el => el.validationMessage")
        assert "at most 4,000 characters (this one has 4,001)" in said
        await expect(box).to_have_value(smile * 4001)
        await expect(page.locator("#messages .msg")).to_have_count(0)
        await box.fill(smile * 4000)
        await box.press("Enter")
        await expect(page.locator('#messages .msg[data-state="success"]')).to_have_count(
            1, timeout=WAIT_MS
        )
        await expect(box).to_have_value("")
        auth = {"Authorization": f"Bearer {alice['token']}"}
        (room,) = (await http.get(f"{web.rooms}/rooms", headers=auth)).json()
        stored = (await http.get(f"{web.history}/rooms/{room['id']}/messages", headers=auth)).json()
    assert [m["content"] for m in stored] == [smile * 4000]


async def test_people_of_the_same_name_are_told_apart(
    web: WebMesh, contexts: list[BrowserContext]
) -> None:
    """Names are not unique: the new-room list shows each person's id, and the room is made
    with the one chosen."""
    alice_name, bob_name = names()
    async with httpx.AsyncClient() as http:
        made = [await http.post(f"{web.users}/users", json={"name": bob_name}) for _ in range(2)]
        assert [m.status_code for m in made] == [201, 201]
        bob_ids = [m.json()["id"] for m in made]
        page = await sign_up(contexts[0], web.edges[0].url, alice_name)
        await page.get_by_role("button", name="New room").click()
        await expect(page.get_by_label(bob_name, exact=True)).to_have_count(2, timeout=WAIT_MS)
        for bob_id in bob_ids:
            await expect(page.locator("#user-list label", has_text=bob_id)).to_be_visible()
        await page.locator("#user-list label", has_text=bob_ids[1]).get_by_role("checkbox").check()
        await page.get_by_role("button", name="Create room").click()
        await expect(page.locator("#room-title")).to_have_text(bob_name, timeout=WAIT_MS)
        alice = await me(page)
        auth = {"Authorization": f"Bearer {alice['token']}"}
        (room,) = (await http.get(f"{web.rooms}/rooms", headers=auth)).json()
    assert [p["id"] for p in room["participants"]] == [alice["id"], bob_ids[1]]


async def test_avatar_initials_keep_whole_characters(
    web: WebMesh, contexts: list[BrowserContext]
) -> None:
    """A name's initials are whole characters as a reader sees them: an emoji, a flag or a
    family emoji is never cut into half a character."""
    page = await contexts[0].new_page()
    await page.goto(f"{web.edges[0].url}/")
    got = await page.evaluate(
        "() => ['Dave 🎉', 'ann lee', '🇫🇷 Zoé', '', '👨‍👩‍👧 x'].map(initials)"
    )
    assert got == ["D🎉", "AL", "🇫🇷Z", "?", "👨‍👩‍👧X"]
