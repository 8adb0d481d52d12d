"""The API docs pages load their files from the service itself, never from a CDN."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from infra.http import (
    DOCS_ASSETS,
    DOCS_ASSETS_PATH,
    install_common_middleware,
    install_docs,
    install_error_handlers,
)
from infra.settings import CommonSettings


def _app() -> FastAPI:
    app = FastAPI(title="t", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    install_common_middleware(app, CommonSettings())
    install_docs(app)
    return app


def _policy(header: str) -> dict[str, str]:
    directives = (part.strip().partition(" ") for part in header.split(";"))
    return {name: value for name, _, value in directives}


@pytest.mark.parametrize(
    ("page", "assets", "inline_scripts", "worker"),
    [
        ("/docs", ["swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"], 1, None),
        ("/redoc", ["redoc.standalone.js", "favicon.png"], 0, "blob:"),
    ],
)
def test_docs_pages_name_only_their_own_files(
    page: str, assets: list[str], inline_scripts: int, worker: str | None
) -> None:
    """Each page references its files under the service's own path, each is served (cached),
    and the page's policy allows nothing from another origin, and only its own inline script."""
    with TestClient(_app()) as client:
        got = client.get(page)
        assert got.status_code == 200
        html = got.text
        assert "http://" not in html  # no CDN, no web fonts
        assert "https://" not in html
        assert "'/openapi.json'" in html or '"/openapi.json"' in html
        inline = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
        assert len(inline) == inline_scripts
        hashes = "".join(
            f" 'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in inline
        )
        policy = _policy(got.headers["content-security-policy"])
        assert policy.pop("script-src") == f"'self'{hashes}"
        assert policy.pop("worker-src", None) == worker
        assert policy == {
            "default-src": "'none'",
            "connect-src": "'self'",
            "img-src": "'self' data:",
            "style-src": "'self' 'unsafe-inline'",
            "base-uri": "'none'",
            "form-action": "'none'",
            "frame-ancestors": "'none'",
        }
        for name in assets:
            assert f"{DOCS_ASSETS_PATH}/{name}" in html
            asset = client.get(f"{DOCS_ASSETS_PATH}/{name}")
            assert asset.status_code == 200
            assert asset.headers["content-type"].startswith(DOCS_ASSETS[name])
            assert asset.headers["cache-control"] == "public, max-age=86400"
            assert len(asset.content) > 1_000


def test_only_the_four_files_are_served() -> None:
    """Any other name under the assets path, a way up to the package's own code included, is
    the contract's 404."""
    with TestClient(_app()) as client:
        for missing in ("nothing.js", "..%2Fcore.py", "%2e%2e%2f__init__.py", "..%2Fconsts.py"):
            absent = client.get(f"{DOCS_ASSETS_PATH}/{missing}")
            assert absent.status_code == 404
            assert absent.json()["error"]["code"] == "not_found"


def test_pages_behind_a_path_prefix() -> None:
    """Behind a proxy's path prefix (root_path, with or without its trailing slash) the pages
    name the prefixed addresses, never a `//` one (which a browser reads as another host)."""
    for root in ("/api", "/api/"):
        with TestClient(_app(), root_path=root) as client:
            html = client.get("/docs").text + client.get("/redoc").text
            assert "/api/openapi.json" in html
            assert f"/api{DOCS_ASSETS_PATH}/swagger-ui-bundle.js" in html
            assert f"/api{DOCS_ASSETS_PATH}/redoc.standalone.js" in html
            assert "//" not in html.replace("http://", "").replace("https://", "")


def test_docs_need_fastapis_own_pages_off() -> None:
    """An app that still has FastAPI's CDN pages is refused (both would answer /docs), and so
    is one without an OpenAPI document."""
    with pytest.raises(ValueError, match="docs_url=None"):
        install_docs(FastAPI())
    with pytest.raises(ValueError, match="openapi_url"):
        install_docs(FastAPI(docs_url=None, redoc_url=None, openapi_url=None))
