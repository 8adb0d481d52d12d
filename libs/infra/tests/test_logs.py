"""Log lines never carry tokens: query values, bearer headers and JWT-shaped strings; generated
correlation ids are unique."""

from __future__ import annotations

import json
import logging
import os

from infra.auth import TokenService
from infra.logs import ClientFaultsAsInfo, JsonFormatter, new_correlation_id, redact, setup_logging


def _token() -> str:
    return TokenService("s" * 40, "chat", 3600, 30).issue("user_1")[0]


def test_redact_query_bearer_and_jwt() -> None:
    """`?token=`, `Bearer` values and bare JWTs are replaced; other text is kept."""
    token = _token()
    line = f'1.2.3.4 - "WebSocket /ws?token={token}&x=1" [accepted] Bearer {token} {token}'
    out = redact(line)
    assert token not in out
    assert "token=[redacted]&x=1" in out
    assert "Bearer [redacted]" in out
    assert redact("nothing secret here") == "nothing secret here"
    assert (
        redact('{"action": "refresh", "token": "abc"}')
        == '{"action": "refresh", "token": "[redacted]"}'
    )
    assert redact('url="/events?token=abc"') == 'url="/events?token=[redacted]"'
    assert redact('token=\\"abc\\"') == 'token=\\"[redacted]\\"'


def test_formatter_redacts_message_args_and_exceptions() -> None:
    """The JSON formatter redacts the formatted message and the exception text."""
    token = _token()
    try:
        raise ValueError(f"bad token {token}")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "uvicorn.error", logging.INFO, __file__, 1, "%s", (f"/ws?token={token}",), None
        )
        record.exc_info = sys.exc_info()
    text = JsonFormatter("test").format(record)
    assert token not in text
    assert json.loads(text)["msg"] == "/ws?token=[redacted]"


def test_correlation_ids_are_distinct_and_differ_after_fork() -> None:
    """Generated correlation ids are 16 hex characters, never repeat within a process, and a
    forked child does not hand out its parent's ids."""
    ids = [new_correlation_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids[:100])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, new_correlation_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = new_correlation_id()
    assert len(child) == 16
    assert child[:8] != parent[:8]


def test_a_clients_protocol_fault_is_logged_at_info_without_traceback() -> None:
    """uvicorn's error-level "Invalid UTF-8 ... from client." (with its traceback) is written at
    info without it once setup_logging ran; the server's own errors keep their level."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter("test").format(record))

    server_log = logging.getLogger("uvicorn.error")
    # collected on the logger itself: a uvicorn.Config made by an earlier test in this process
    # may have given its parents handlers of their own
    saved = server_log.handlers[:], server_log.propagate, server_log.level
    root = logging.getLogger()
    root_saved = root.handlers[:], root.level
    try:
        setup_logging("test")
        setup_logging("test")  # twice: still one filter
        assert sum(isinstance(f, ClientFaultsAsInfo) for f in server_log.filters) == 1
        server_log.handlers[:], server_log.propagate = [Collect()], False
        server_log.setLevel(logging.INFO)
        try:
            "\xff".encode("ascii")
        except UnicodeError:
            server_log.exception("Invalid UTF-8 sequence received from client.")
            server_log.exception("Exception in ASGI application\n")
    finally:
        server_log.handlers[:], server_log.propagate, level = saved
        server_log.setLevel(level)
        root.handlers[:], root_level = root_saved
        root.setLevel(root_level)
    fault, own = (json.loads(line) for line in lines)
    assert (fault["level"], "exc" in fault) == ("info", False)
    assert (own["level"], "exc" in own) == ("error", True)
