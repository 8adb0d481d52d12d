"""SSE stream positions (`id:` / `Last-Event-ID`), no I/O.

A position says, per room the client knows, which seqs it has been sent: merged inclusive
intervals (`SentSet.spans`), almost always one `[1, N]`. It holds no node or connection id,
so it is valid on any edge node and across restarts: a resume replays from history every seq
outside those intervals (and announces the rooms the position does not name), never one inside.

Wire form: `1.` + base64url (no padding) of zlib-compressed JSON `{"<roomId>": N | [[lo, hi],
...]}` where `N` stands for `[[1, N]]` (0: none yet). Opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import zlib

import orjson

VERSION = "1."
MAX_ROOMS = 1000
MAX_SPANS = 64
MAX_TEXT = 64 * 1024
MAX_JSON = 1024 * 1024

Spans = list[tuple[int, int]]


def encode_position(rooms: dict[str, Spans]) -> str:
    """The `id:` of a stream whose client has been sent `rooms` (room -> sent intervals)."""
    body: dict[str, int | list[list[int]]] = {}
    for room_id in sorted(rooms):
        spans = rooms[room_id]
        if not spans:
            body[room_id] = 0
        elif len(spans) == 1 and spans[0][0] <= 1:
            body[room_id] = spans[0][1]
        else:
            body[room_id] = [[lo, hi] for lo, hi in spans[:MAX_SPANS]]
    raw = zlib.compress(orjson.dumps(body), 6)
    return VERSION + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_position(text: str) -> dict[str, Spans] | None:
    """The rooms and sent intervals of a `Last-Event-ID`, or None if it is not one of ours."""
    if not text.startswith(VERSION) or len(text) > MAX_TEXT:
        return None
    data = text.removeprefix(VERSION)
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        inflater = zlib.decompressobj()
        plain = inflater.decompress(raw, MAX_JSON)
        if inflater.unconsumed_tail:
            return None
        body = orjson.loads(plain)
    except (binascii.Error, ValueError, zlib.error, orjson.JSONDecodeError):
        return None
    if not isinstance(body, dict) or len(body) > MAX_ROOMS:
        return None
    out: dict[str, Spans] = {}
    for room_id, value in body.items():
        if not isinstance(room_id, str) or not 0 < len(room_id) <= 128:
            return None
        spans = _spans(value)
        if spans is None:
            return None
        out[room_id] = spans
    return out


def _spans(value: object) -> Spans | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [] if value == 0 else [(1, value)] if value > 0 else None
    if not isinstance(value, list) or len(value) > MAX_SPANS:
        return None
    spans: Spans = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
            or not 1 <= item[0] <= item[1]
        ):
            return None
        spans.append((item[0], item[1]))
    spans.sort()
    return spans


def resume_after(spans: Spans) -> int:
    """The seq after which a replay must start: the end of the run that begins at seq 1."""
    if spans and spans[0][0] <= 1:
        return spans[0][1]
    return 0
