"""FastAPI plumbing shared by the HTTP services: the contract's error shape, body limits,
security headers, bearer authentication, the health endpoints and the API docs pages."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import fastapi_offline
from botocore.exceptions import ClientError
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nats.errors import Error as NatsError
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.errors import ChatError, ErrorBody, ErrorCode, code_for_location
from infra.auth import Claims, TokenService, bearer_token
from infra.metrics import count_error, install_metrics
from infra.settings import CommonSettings

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid input"},
    401: {"model": ErrorBody, "description": "Missing, invalid or expired token"},
    413: {"model": ErrorBody, "description": "Body larger than the limit"},
}


def error_response(status: int, code: ErrorCode | str, message: str) -> JSONResponse:
    count_error(str(code))
    return JSONResponse(ErrorBody.of(code, message).model_dump(), status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[ErrorCode, str]:
    errors = exc.errors()
    if not errors:
        return ErrorCode.VALIDATION_ERROR, "invalid request"
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return ErrorCode.INVALID_JSON, "request body is not valid JSON"
    if loc == ("body",) and first.get("type") == "missing":
        return ErrorCode.VALIDATION_ERROR, "request body required: a JSON object"
    field = ".".join(str(p) for p in loc if p not in ("body", "query", "path"))
    msg = str(first.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    text = f"{field}: {msg}" if field else msg
    return code_for_location(loc), text[:300]


BODY_NOT_PARSED = "There was an error parsing the body"  # FastAPI's detail, 400


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in the contract's JSON shape; FastAPI's default 422 body never does
    (and is not in the OpenAPI document either)."""
    document_errors_as_answered(app)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message = _validation_message(exc)
        return error_response(400, code, message)

    @app.exception_handler(ChatError)
    async def _chat(_: Request, exc: ChatError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            404: ErrorCode.NOT_FOUND,
            405: ErrorCode.METHOD_NOT_ALLOWED,
            401: ErrorCode.UNAUTHORIZED,
            413: ErrorCode.PAYLOAD_TOO_LARGE,
        }
        code = codes.get(exc.status_code, ErrorCode.VALIDATION_ERROR)
        if exc.status_code >= 500:
            code = ErrorCode.INTERNAL
        if exc.status_code == 400 and exc.detail == BODY_NOT_PARSED:
            # FastAPI's answer to a body that is not even text (not UTF-8): bad JSON all the same
            return error_response(400, ErrorCode.INVALID_JSON, "request body is not valid JSON")
        return error_response(exc.status_code, code, str(exc.detail))

    # A dependency that does not answer (store, bus, cache) is an outage, not a bug: 503 and a
    # warning line. Handled here by class, so Starlette does not re-raise it to the server as
    # it does for the catch-all below (which logged two tracebacks per request in an outage).
    async def _outage(_: Request, exc: Exception) -> JSONResponse:
        if not is_outage(exc):
            log.error("unhandled error", exc_info=exc)
        else:
            log.warning("a dependency did not answer: %s: %s", type(exc).__name__, exc)
        return error_response(503, ErrorCode.UNAVAILABLE, "temporarily unavailable, retry")

    for outage in OUTAGE_TYPES:
        app.add_exception_handler(outage, _outage)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(503, ErrorCode.UNAVAILABLE, "temporarily unavailable, retry")


# What a dependency's outage raises: timeouts and connection errors (the store client's
# retries exhausted, NATS requests unanswered, Redis gone).
OUTAGE_TYPES: tuple[type[Exception], ...] = (
    TimeoutError,
    OSError,
    ClientError,
    NatsError,
    RedisError,
)
# botocore error codes that mean "not now" rather than "wrong request"
_OUTAGE_CODES = frozenset(
    {
        "ConnectionError",
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)


def is_outage(exc: BaseException) -> bool:
    """A dependency not answering (or refusing for load), as opposed to a programming error."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in _OUTAGE_CODES or int(status or 0) >= 500
    return isinstance(exc, OUTAGE_TYPES)


class BodyLimitMiddleware:
    """413 with the JSON error body for request bodies over the limit (declared or streamed),
    408 for a body not received within `timeout` seconds (a client trickling its body would
    otherwise hold its socket and a task for as long as it likes)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 15.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        # Bodies are small (64 KiB by default): read them whole, so a streamed body over the
        # limit is refused before the application sees any of it.
        chunks: list[bytes] = []
        size = 0
        more = True
        try:
            async with asyncio.timeout(self.timeout):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body = message.get("body", b"")
                    size += len(body)
                    if size > self.max_bytes:
                        break
                    chunks.append(body)
                    more = bool(message.get("more_body", False))
        except TimeoutError:
            late = f"request body not received within {self.timeout:g} s"
            response = error_response(408, ErrorCode.VALIDATION_ERROR, late)
            response.headers["connection"] = "close"  # the rest of the body is not awaited
            await response(scope, receive, send)
            return
        if size > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, ErrorCode.PAYLOAD_TOO_LARGE, f"request body over {self.max_bytes} bytes"
        )
        await response(scope, receive, send)


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    # no page of these services may be framed (clickjacking); scripts are not restricted here
    # because the web client and /docs set their own policy where they need one
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeadersMiddleware:
    """Adds conservative security headers to every HTTP answer."""

    def __init__(self, app: ASGIApp, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        self.app = app
        self.headers = SECURITY_HEADERS + (extra or [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                existing = {k.lower() for k, _ in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers.extend((k, v) for k, v in self.headers if k not in existing)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ResponseDeadlineMiddleware:
    """503 `unavailable` for an HTTP request whose answer has not started within `seconds`.

    Why: a dependency that stops answering (a frozen store) would otherwise hold the request
    for as long as the client library retries (the store client: six attempts of 10 s). Once
    the answer has started (a stream) it is no longer bounded. The handler is cancelled,
    which each service survives as it survives a crash between two steps.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        deadline = asyncio.timeout(self.seconds)

        async def send_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not deadline.expired():  # (an answer can start as the deadline fires)
                    deadline.reschedule(None)
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, send_started)
        except TimeoutError:
            if not deadline.expired() or started:
                raise
            log.warning(
                "no answer within %.1f s: %s %s", self.seconds, scope.get("method"), scope["path"]
            )
            response = error_response(
                503, ErrorCode.UNAVAILABLE, "no answer in time (a dependency is slow); retry"
            )
            await response(scope, receive, send)


class JsonCorsMiddleware(CORSMiddleware):
    """Starlette's CORS, with its refusal of a preflight (an origin, method or header not
    allowed) in the contract's error shape: Starlette answers it in plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode()  # "Disallowed CORS origin, method, headers"
        if "origin" in reason:
            reason += " (the allowed origins are the service's CHAT_CORS_ORIGINS)"
        refused = error_response(403, ErrorCode.FORBIDDEN, reason)
        for name, value in response.headers.items():  # the CORS headers it would have sent
            if name.startswith("access-control-") or name == "vary":
                refused.headers[name] = value
        return refused


def install_common_middleware(app: FastAPI, settings: CommonSettings) -> None:
    """The limits, headers and metrics every HTTP service has, as its settings say."""
    # innermost: the deadline runs from the moment the body has been read
    app.add_middleware(ResponseDeadlineMiddleware, seconds=settings.response_timeout_seconds)
    if settings.cors_origin_list:
        app.add_middleware(
            JsonCorsMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Link"],
            max_age=600,
        )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout=settings.body_timeout_seconds,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    # outermost: `/metrics`, request counts and latency, the request's correlation id
    install_metrics(app)


# --- API docs -------------------------------------------------------------------------------------

# Swagger UI's and ReDoc's files as the fastapi-offline package ships them, served by the
# service itself: `/docs` works without the internet (FastAPI's own pages load them from a
# CDN), under a policy that allows only the page's own origin. Four known files, read once
# (about 2.8 MB) and kept: no folder is served, and nothing runs in the thread pool.
DOCS_ASSETS_PATH = "/docs-assets"
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
DOCS_ASSETS_CACHE = "public, max-age=86400"  # they change only with the package
_COMMON_CSP = (
    "default-src 'none'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _docs_csp(html: str, extra: str) -> str:
    """The page's policy: scripts from this origin plus the page's own inline script (by its
    hash: FastAPI renders Swagger UI's set-up inline)."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in _INLINE_SCRIPT.findall(html)
    )
    return f"{_COMMON_CSP}; script-src 'self'{hashes}; {extra}"


def _with_policy(page: HTMLResponse, extra: str) -> HTMLResponse:
    page.headers["content-security-policy"] = _docs_csp(bytes(page.body).decode(), extra)
    return page


def install_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc` over the app's OpenAPI, their files from this process.
    The app is made with `docs_url=None, redoc_url=None` (FastAPI's CDN pages off)."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("make the app with docs_url=None and redoc_url=None")
    if app.openapi_url is None:
        raise ValueError("the docs pages need the app's openapi_url")
    openapi_url = app.openapi_url
    assets: dict[str, bytes] = {}

    @app.get(DOCS_ASSETS_PATH + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        media_type = DOCS_ASSETS.get(name)
        if media_type is None:
            raise ChatError(ErrorCode.NOT_FOUND, "no such file", 404)
        if name not in assets:  # once per process, from the page cache: about 1 ms
            assets[name] = (DOCS_ASSETS_DIR / name).read_bytes()
        return Response(
            assets[name], media_type=media_type, headers={"cache-control": DOCS_ASSETS_CACHE}
        )

    def urls(request: Request) -> tuple[str, str]:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return f"{root}{openapi_url}", f"{root}{DOCS_ASSETS_PATH}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        spec, files = urls(request)
        # no badge from the public validator (its image is off this origin)
        parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}
        page = get_swagger_ui_html(
            openapi_url=spec,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{files}/swagger-ui-bundle.js",
            swagger_css_url=f"{files}/swagger-ui.css",
            swagger_favicon_url=f"{files}/favicon.png",
            swagger_ui_parameters=parameters,
        )
        return _with_policy(page, "style-src 'self' 'unsafe-inline'")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        spec, files = urls(request)
        page = get_redoc_html(
            openapi_url=spec,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{files}/redoc.standalone.js",
            redoc_favicon_url=f"{files}/favicon.png",
            with_google_fonts=False,
        )
        # ReDoc styles through <style> elements it writes, and searches in a blob: worker
        return _with_policy(page, "style-src 'self' 'unsafe-inline'; worker-src blob:")


# --- authentication -------------------------------------------------------------------------------


def get_token_service(request: Request) -> TokenService:
    tokens: TokenService = request.app.state.tokens
    return tokens


# Documents the bearer scheme in every service's OpenAPI (each route that needs a token
# depends on it through `current_claims`); the token itself is verified below.
bearer_scheme = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


# The dependencies are `async def`, though they never wait: FastAPI runs a plain `def`
# dependency in its thread pool, a hand-off to a worker thread and back on every request.
async def current_claims(
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
) -> Claims:
    """FastAPI dependency: the verified claims of the request's bearer token (else 401)."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise ChatError(ErrorCode.UNAUTHORIZED, "missing bearer token", 401)
    return get_token_service(request).verify(token)


CurrentClaims = Annotated[Claims, Depends(current_claims)]


async def current_user_id(claims: CurrentClaims) -> str:
    return claims.user_id


CurrentUserId = Annotated[str, Depends(current_user_id)]


# --- health ---------------------------------------------------------------------------------------


def health_router(
    checks: Callable[[], dict[str, ReadinessCheck]], timeout: float = 3.0
) -> APIRouter:
    """`/healthz` (process up) and `/readyz` (every dependency answers, each within `timeout`
    seconds: a probe must get its answer quickly, also when a dependency hangs)."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Dependencies reachable",
        responses={503: {"description": "a dependency is not reachable"}},
    )
    async def readyz() -> JSONResponse:
        failures: dict[str, str] = {}

        async def run(name: str, check: ReadinessCheck) -> None:
            try:
                await asyncio.wait_for(check(), timeout)
            except TimeoutError:
                failures[name] = f"no answer within {timeout:g} s"
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"[:200]

        await asyncio.gather(*(run(name, check) for name, check in checks().items()))
        if failures:
            return JSONResponse({"status": "unavailable", "failures": failures}, status_code=503)
        return JSONResponse({"status": "ready"})

    return router


def link_header(url: str) -> str:
    return f'<{url}>; rel="next"'


async def require_json(request: Request) -> None:
    """Bodies are JSON: a body declared as another media type is a 400 with a clear message.

    A body without Content-Type is parsed as JSON (routers use `strict_content_type=False`):
    FastAPI's strict rule guards cookie-authenticated calls against CSRF, and these APIs
    authenticate with bearer tokens only, which a browser never sends on its own.
    """
    value = request.headers.get("content-type")
    if value is None:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ChatError(
            ErrorCode.VALIDATION_ERROR, "send the body as JSON (Content-Type: application/json)"
        )


def document_errors_as_answered(app: FastAPI) -> None:
    """Drop FastAPI's default 422 from the OpenAPI document: invalid input is a 400 ErrorBody."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for path in doc.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = doc.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
