"""Every service's /docs (Swagger UI) and /redoc in a real browser with no way off the machine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, Route, expect
from web_mesh import WebMesh

WAIT_MS = 20_000


@pytest.fixture
async def offline(browser: Browser) -> AsyncIterator[tuple[BrowserContext, list[str]]]:
    """A browser profile whose requests off 127.0.0.1 are refused (and recorded)."""
    context = await browser.new_context()
    refused: list[str] = []

    async def loopback_only(route: Route) -> None:
        if route.request.url.startswith("http://127.0.0.1:"):
            await route.continue_()
        else:
            refused.append(route.request.url)
            await route.abort()

    await context.route("**/*", loopback_only)
    try:
        yield context, refused
    finally:
        await context.close()


async def test_swagger_ui_and_redoc_render_offline(
    web: WebMesh, offline: tuple[BrowserContext, list[str]]
) -> None:
    """Each service's Swagger UI lists its operations and ReDoc its title, with every script
    from the service itself: nothing asked of another host, no policy violation."""
    context, refused = offline
    problems: list[str] = []
    for base in (web.users, web.rooms, web.history, web.edges[0].url):
        page = await context.new_page()
        page.on(
            "console",
            lambda msg: problems.append(msg.text) if msg.type == "error" else None,
        )
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await page.goto(f"{base}/docs")
        await expect(page.locator(".opblock").first).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator(".info .title")).to_contain_text("chat", timeout=WAIT_MS)
        await page.goto(f"{base}/redoc")
        await expect(page.locator("h1").first).to_contain_text("chat", timeout=WAIT_MS)
        await page.close()
    assert refused == []
    # ReDoc's menu always links its maker with a logo from their CDN: the policy keeps it out
    # (a console error), and nothing else may be refused or fail
    redocly_logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    assert [text for text in problems if redocly_logo not in text] == []
