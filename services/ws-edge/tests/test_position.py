"""SSE positions: round trip, compact common case, refusal of anything not ours."""

from __future__ import annotations

import base64
import zlib

from ws_edge.domain.position import decode_position, encode_position, resume_after
from ws_edge.sse import sse_event


def test_round_trip_of_runs_gaps_and_empty_rooms() -> None:
    """Every room's sent intervals come back as they were encoded."""
    rooms = {"room_a": [(1, 17)], "room_b": [], "room_c": [(1, 3), (5, 9)], "room_d": [(4, 4)]}
    text = encode_position(rooms)
    assert text.startswith("1.")
    assert decode_position(text) == rooms


def test_common_case_is_short() -> None:
    """A hundred rooms each read up to some seq fit in a small header."""
    rooms = {f"room_01J{i:023d}": [(1, 1000 + i)] for i in range(100)}
    assert len(encode_position(rooms)) < 2000


def test_foreign_or_broken_ids_are_refused() -> None:
    """Anything that is not a valid position decodes to None (the stream starts fresh)."""

    def wrap(raw: bytes) -> str:
        return "1." + base64.urlsafe_b64encode(zlib.compress(raw)).decode().rstrip("=")

    for text in ("", "42", "1.", "1.!!!", "2.abc", wrap(b"[1,2]"), wrap(b'{"r": -1}')):
        assert decode_position(text) is None
    assert decode_position(wrap(b'{"r": [[3, 2]]}')) is None
    assert decode_position(wrap(b'{"r": true}')) is None
    assert decode_position(wrap(b" " * 2_000_000)) is None


def test_resume_starts_after_the_first_run() -> None:
    """A replay starts after the run beginning at seq 1, or from the start when there is none."""
    assert resume_after([(1, 5), (8, 9)]) == 5
    assert resume_after([(4, 9)]) == 0
    assert resume_after([]) == 0


def test_sse_event_format() -> None:
    """An event is `event:`, optional `id:`, `data:` lines and a blank line."""
    assert sse_event("synced", '{"a":1}', "1.x") == 'event: synced\nid: 1.x\ndata: {"a":1}\n\n'
    assert sse_event("presence", "a\nb") == "event: presence\ndata: a\ndata: b\n\n"
