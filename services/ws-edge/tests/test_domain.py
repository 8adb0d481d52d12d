"""Edge protocol logic without sockets: frame parsing, limits, sent-sets, room ordering."""

from __future__ import annotations

import orjson

from contracts.rest import Message
from contracts.ws import CreateMessageAction, ErrorFrame, SyncAction
from ws_edge.domain.delivery import RoomOrder, SentSet
from ws_edge.domain.frames import parse_client_frame
from ws_edge.domain.limits import AbuseMeter, TokenBucket

LIMIT = 64 * 1024


def _msg(seq: int) -> Message:
    return Message(
        roomId="room_x",
        messageId=f"m{seq}",
        content="hi",
        senderId="u",
        createdAt="2024-06-16T12:36:10.000Z",
        seq=seq,
    )


def _code(frame: object) -> str:
    assert isinstance(frame, ErrorFrame)
    return frame.error.code


def test_seed_create_message_parses() -> None:
    """The seed's create_message frame becomes an action."""
    frame = {
        "action": "create_message",
        "roomId": "room_456",
        "messageId": "msg_003",
        "content": "How are you?",
        "senderId": "user_123",
        "createdAt": "2024-06-16T12:36:10.000Z",
        "requestId": "r1",
    }
    action = parse_client_frame(orjson.dumps(frame).decode(), LIMIT)
    assert isinstance(action, CreateMessageAction)
    assert action.requestId == "r1"


def test_bad_frames_get_specific_codes() -> None:
    """Bad JSON, non-objects, unknown actions, wrong types, deep nesting, size: error frames."""
    assert _code(parse_client_frame("{nope", LIMIT)) == "invalid_json"
    assert _code(parse_client_frame("[1,2]", LIMIT)) == "validation_error"
    assert _code(parse_client_frame('{"action":"dance","requestId":"q"}', LIMIT)) == (
        "unknown_action"
    )
    wrong = parse_client_frame('{"action":"sync","rooms":[],"requestId":"q"}', LIMIT)
    assert _code(wrong) == "validation_error"
    assert isinstance(wrong, ErrorFrame)
    assert wrong.requestId == "q"
    deep = '{"action":"sync","rooms":' + "[" * 100 + "]" * 100 + "}"
    assert _code(parse_client_frame(deep, LIMIT)) == "validation_error"
    big = '{"action":"sync","rooms":{},"pad":"' + "x" * LIMIT + '"}'
    assert _code(parse_client_frame(big, LIMIT)) == "frame_too_large"
    huge_num = '{"action":"sync","rooms":{"r":' + "9" * 400 + "}}"
    assert isinstance(parse_client_frame(huge_num, LIMIT), ErrorFrame)
    content = (
        '{"action":"create_message","roomId":"r","messageId":"m","senderId":"u",'
        '"createdAt":"2024-01-01T00:00:00Z","content":"   "}'
    )
    bad_content = parse_client_frame(content, LIMIT)
    assert _code(bad_content) == "invalid_content"
    assert isinstance(bad_content, ErrorFrame)
    assert bad_content.messageId == "m"


def test_sync_parses() -> None:
    """`sync` with a map of last seqs parses."""
    assert isinstance(parse_client_frame('{"action":"sync","rooms":{"a":3}}', LIMIT), SyncAction)


def test_token_bucket_and_abuse() -> None:
    """200 frames at once, then 100/s; 100 refusals within 10 s make a client abusive."""
    bucket = TokenBucket(200, 100.0, now=0.0)
    assert all(bucket.take(0.0) for _ in range(200))
    assert not bucket.take(0.0)
    assert bucket.take(0.011)
    meter = AbuseMeter(100, 10.0)
    assert not any(meter.refuse(float(i) * 0.05) for i in range(99))
    assert meter.refuse(5.0)
    spaced = AbuseMeter(3, 10.0)
    assert not spaced.refuse(0.0)
    assert not spaced.refuse(11.0)
    assert not spaced.refuse(22.0)


def test_sent_set_merges() -> None:
    """Sent seqs merge into intervals; membership and highest are right."""
    sent = SentSet()
    for seq in (5, 6, 7, 1, 2, 10):
        sent.add(seq)
    assert sent.spans == [(1, 2), (5, 7), (10, 10)]
    sent.add_range(3, 4)
    assert sent.spans == [(1, 7), (10, 10)]
    assert 6 in sent
    assert 8 not in sent
    assert sent.highest == 10


def test_sent_set_matches_a_plain_set() -> None:
    """The fast paths (a seq newer than all sent; a range that extends the last span) keep
    the spans merged, sorted and equal to the plain set of seqs added, in any order."""
    import itertools
    import random

    rng = random.Random(7)
    for _ in range(300):
        sent, plain = SentSet(), set()
        for _ in range(rng.randrange(1, 30)):
            lo = rng.randrange(1, 40)
            hi = lo + rng.choice((0, 0, 0, 1, 2, 5))
            if rng.random() < 0.5:
                # mostly in order, like live delivery, so the fast paths are taken
                lo = hi = sent.highest + rng.choice((1, 1, 1, 2))
            sent.add_range(lo, hi)
            plain.update(range(lo, hi + 1))
            assert sorted(sent.spans) == sent.spans
            assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(sent.spans))
            assert {s for lo_, hi_ in sent.spans for s in range(lo_, hi_ + 1)} == plain
            assert all((seq in sent) == (seq in plain) for seq in range(0, 50))


def test_room_order_releases_in_seq_order() -> None:
    """Out-of-order events wait for the gap, duplicates are dropped, fill releases in order."""
    order = RoomOrder(delivered=0)
    assert [m.seq for m in order.offer(_msg(1))] == [1]
    assert order.offer(_msg(3)) == []
    assert order.offer(_msg(1)) == []
    assert order.gap() == (1, 2)
    assert [m.seq for m in order.fill([_msg(2)])] == [2, 3]
    assert order.gap() is None
    assert [m.seq for m in order.offer(_msg(4))] == [4]


def test_room_order_unknown_start_takes_first_event() -> None:
    """A feed that does not know the room's position starts at the first event it sees."""
    order = RoomOrder()
    assert [m.seq for m in order.offer(_msg(17))] == [17]
    assert order.offer(_msg(17)) == []
    assert [m.seq for m in order.offer(_msg(18))] == [18]
