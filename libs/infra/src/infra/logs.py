"""JSON logs on stderr (one object per line), with the service name on every record."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import sys
import time
from contextvars import ContextVar

# The correlation id of whatever this task is handling: an HTTP request's X-Request-Id, a WS
# frame's requestId (or a generated id), a bus payload's `correlationId`. Every log line made
# meanwhile carries it, and every bus payload published meanwhile (see infra.bus.stamp).
correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)


_id_prefix = secrets.token_hex(4)
_id_counter = itertools.count(1)


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(4), itertools.count(1)


os.register_at_fork(after_in_child=_new_id_prefix)


def new_correlation_id() -> str:
    """16 hex characters: a random prefix drawn once per process (again after a fork) and a
    counter, so no two ids of a process repeat within 2**32 of them. Why not 8 random bytes
    each time: a fresh id per WS frame, and reading the OS's random source for each was a
    measurable share of the edge's CPU per message. Ids trace requests; they grant nothing."""
    return f"{_id_prefix}{next(_id_counter) & 0xFFFFFFFF:08x}"


# Secrets that must never reach a log line: `token=` query values (WS and SSE URLs), `"token":`
# fields, bearer headers and anything shaped like a JWT (three base64url parts, `eyJ` first).
_SECRET_PATTERNS = (
    (re.compile(r"(?i)(token\\?[\"']?\s*[=:]\s*\\?[\"']?)[^&\s\"'\\,}]+"), r"\1[redacted]"),
    (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), r"\1[redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
)


def redact(text: str) -> str:
    """The text with tokens (query values, bearer headers, JWT-shaped strings) replaced."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in ("correlation_id", "room_id", "user_id", "node"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if "correlation_id" not in entry:
            current = correlation_id.get()
            if current is not None:
                entry["correlation_id"] = current
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


# What uvicorn logs at error level, with a traceback, when a *client* broke the protocol (the
# connection is closed with 1007 all the same): a hostile client could fill the error log.
CLIENT_FAULTS = frozenset({"Invalid UTF-8 sequence received from client."})


class ClientFaultsAsInfo(logging.Filter):
    """Logs a client's protocol fault at info, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in CLIENT_FAULTS:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs would carry `?token=` query strings: they are off, and every line is passed
    # through `redact` (uvicorn logs WebSocket handshakes with their query; docs/security.md).
    logging.getLogger("uvicorn.access").disabled = True
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientFaultsAsInfo) for f in server_log.filters):
        server_log.addFilter(ClientFaultsAsInfo())
    for noisy in ("botocore", "aiobotocore", "nats"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
