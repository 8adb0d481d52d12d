"""The hub of one edge node: local connections, per-room feeds, actions, bus events.

Fan-out: the node subscribes to `chat.evt.message_created.<roomId>` only while it holds a
connection of one of that room's participants (NATS routes by interest: no scan of all
connections or nodes per message, no Redis round trip per message). Each message is encoded
once per node and queued on every local member connection. User-targeted frames
(`room_created`) reach a node on its own subject, routed with the Redis connection map.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError
from pydantic import ValidationError

from contracts import subjects
from contracts.bus import (
    CommandRejected,
    CreateMessageCommand,
    CreateRoomCommand,
    DeliverToUsers,
    HistoryRangeQuery,
    MessageCreated,
    Origin,
    RoomCreated,
)
from contracts.common import check_not_in_future
from contracts.errors import ChatError, ErrorCode
from contracts.rest import Message, Room
from contracts.ws import (
    ClientAction,
    CreateMessageAction,
    CreateRoomAction,
    ErrorFrame,
    MessageCreatedFrame,
    RefreshAction,
    RefreshedFrame,
    RoomCreatedFrame,
    SyncAction,
    SyncedFrame,
)
from infra.auth import TokenService
from infra.bus import ContinuousPull, adopt
from infra.logs import correlation_id, new_correlation_id
from infra.metrics import COMMAND_LATENCY, WS_FRAMES_IN, labelled
from ws_edge.adapters.bus import EdgeBus
from ws_edge.adapters.connmap import RedisConnectionMap
from ws_edge.adapters.direct_ws import text_frame
from ws_edge.connection import Connection
from ws_edge.domain.delivery import RoomOrder
from ws_edge.domain.frames import error_frame
from ws_edge.ordering import RoomSequencer
from ws_edge.settings import Settings

if TYPE_CHECKING:
    from ws_edge.presence import Presence

log = logging.getLogger(__name__)

GAP_FILL_ATTEMPTS = 20
# A `sync` asks rooms for the user's rooms again (the safety net for a `room_created` lost on
# the way) unless this node asked less than this long ago: a reconnecting client syncs right
# after its connect has read the list, and a second read then finds the same rooms (a room
# created meanwhile is routed here, as the connection was registered before the first read).
SYNC_ROOMS_FRESH_SECONDS = 2.0


def encode(frame: object) -> str:
    """Frames leave without null fields (`requestId` only where it answers this connection)."""
    assert hasattr(frame, "model_dump_json")
    text: str = frame.model_dump_json(exclude_none=True)
    return text


@dataclass
class RoomFeed:
    """A room this node delivers: ordering state, local member connections, subscription."""

    room_id: str
    order: RoomOrder
    members: set[Connection] = field(default_factory=set)
    origins: dict[int, Origin] = field(default_factory=dict)
    subscription: Subscription | None = None
    filling: asyncio.Task[None] | None = None


class Admission(Enum):
    """The answer to a connection's request for one of its user's connection slots."""

    REFUSED = "refused"  # the user has the limit of connections already
    REGISTERED = "registered"  # counted and registered in the connection map, atomically
    LOCAL = "local"  # the map did not answer: admitted by this node's own count


class LocalConnections(Mapping[str, str]):
    """This node's connections as connection id -> user id, read through (not copied): the
    heartbeat needs them only when Redis lost the map, and copying 10,000 of them every second
    was most of an idle node's own work besides pings."""

    __slots__ = ("_conns",)

    def __init__(self, conns: dict[str, Connection]) -> None:
        self._conns = conns

    def __getitem__(self, conn_id: str) -> str:
        return self._conns[conn_id].user_id

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._conns))

    def __len__(self) -> int:
        return len(self._conns)


class Hub:
    """Everything one edge node knows about its live connections."""

    def __init__(
        self, settings: Settings, bus: EdgeBus, connmap: RedisConnectionMap, tokens: TokenService
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.connmap = connmap
        self.tokens = tokens
        self.node = settings.node_id
        self.conns: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = {}
        # user -> connections admitted on this node, from the handshake's admission to the end
        self._admitted: dict[str, int] = {}
        self.user_rooms: dict[str, set[str]] = {}
        self._rooms_read_at: dict[str, float] = {}  # user -> when rooms last answered their list
        # per connection, its create_room calls that are out (requestId, and the rooms the
        # router announced to it as their answer: those calls' answers were given already)
        self._creating: dict[str, dict[int, tuple[str | None, set[str]]]] = {}
        self.feeds: dict[str, RoomFeed] = {}
        self.sequencers: dict[str, RoomSequencer] = {}
        self._feed_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._node_sub: Subscription | None = None
        self._map_dirty = False
        self._router: ContinuousPull | None = None
        self.stopping = False
        # set by the app: presence announcements, and listeners of the node subject (HTTP sends)
        self.presence: Presence | None = None
        self.node_listeners: list[Callable[[bytes], None]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._node_sub = await self.bus.subscribe(subjects.node(self.node), self._on_node_msg)
        await self.connmap.heartbeat({})
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        self._tasks.append(asyncio.create_task(self._router_loop(), name="room-router"))

    async def going_away(self) -> None:
        """Graceful shutdown: tell every client to reconnect elsewhere (1001) and leave Redis."""
        self.stopping = True
        for conn in list(self.conns.values()):
            conn.close_soon(1001, "node going away: reconnect and sync")
        with contextlib.suppress(Exception):
            await self.connmap.leave({c.id: c.user_id for c in self.conns.values()})
        await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self.stopping = True
        if self._router is not None:
            await self._router.stop()
        for task in self._tasks:
            task.cancel()
        # nats-py's fetch can turn a cancellation into a timeout: the loops also check
        # `stopping`, and shutdown never waits on them for long
        await asyncio.wait(self._tasks, timeout=3)
        for feed in list(self.feeds.values()):
            if feed.subscription is not None:
                with contextlib.suppress(Exception):
                    await feed.subscription.unsubscribe()

    async def _heartbeat_loop(self) -> None:
        interval = self.connmap.interval
        while not self.stopping:
            await asyncio.sleep(interval)
            try:
                if self._map_dirty:
                    self.connmap.epoch = self.connmap.epoch + "x"  # force re-registration
                    self._map_dirty = False
                await self.connmap.heartbeat(LocalConnections(self.conns))
            except Exception as exc:
                self._map_dirty = True
                log.warning("redis heartbeat failed: %s", exc)

    # --- connections --------------------------------------------------------------------------

    async def admit(self, user_id: str, conn_id: str, limit: int) -> Admission:
        """Take one of the user's `limit` connection slots (on all nodes) for `conn_id`.

        This node's count is taken before anything is awaited, so concurrent handshakes here
        see each other; the connection map then counts and registers in one atomic step
        (`RedisConnectionMap.reserve`), so handshakes on several nodes do too. Why: a count
        read before registering let a burst of handshakes of one token all pass the limit.
        If the map does not answer, this node's count decides (the heartbeat registers the
        connection once the map is back). An admission is given back by `detach` (also for a
        connection whose attach failed).
        """
        held = self._admitted.get(user_id, 0)
        if held >= limit:
            return Admission.REFUSED
        self._admitted[user_id] = held + 1
        try:
            if await self.connmap.reserve(user_id, conn_id, limit):
                return Admission.REGISTERED
        except asyncio.CancelledError:
            # the handshake was abandoned: the entry may have been written all the same
            self.release(user_id)
            task = asyncio.get_running_loop().create_task(self._unregister(user_id, conn_id))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)
            raise
        except Exception as exc:
            log.warning("connection map unavailable, admitting by this node's count: %s", exc)
            return Admission.LOCAL
        self.release(user_id)
        return Admission.REFUSED

    def release(self, user_id: str) -> None:
        """Give back an admission (its connection ended, or never started)."""
        held = self._admitted.get(user_id, 0) - 1
        if held > 0:
            self._admitted[user_id] = held
        else:
            self._admitted.pop(user_id, None)

    async def _unregister(self, user_id: str, conn_id: str) -> None:
        try:
            await self.connmap.unregister(user_id, conn_id)
        except Exception as exc:
            log.warning("redis unregister failed: %s", exc)

    async def attach(
        self, conn: Connection, registered: bool = False, rooms_read: Collection[str] | None = None
    ) -> None:
        """Register a new connection, learn its user's rooms and subscribe their feeds.

        Registration in Redis (done by `admit` when `registered`) comes before the room list
        is read, so a room created meanwhile is either in the list or routed to this node.
        `rooms_read`: the user's rooms as the caller has just read them from rooms (after the
        registration), used instead of asking again.
        """
        self.conns[conn.id] = conn
        self.by_user.setdefault(conn.user_id, set()).add(conn)
        if not registered:
            try:
                await self.connmap.register(conn.user_id, conn.id)
            except Exception as exc:
                self._map_dirty = True
                log.warning("redis register failed (will re-register): %s", exc)
        force = conn.user_id not in self.user_rooms
        rooms = await self._load_user_rooms(conn.user_id, force=force, read=rooms_read)
        if self.presence is not None:
            # after the rooms are known: an `online` announcement names them without asking
            # rooms a second time per connect
            self.presence.connected(conn.user_id, rooms)
        for room_id in rooms:
            await self._join(conn, room_id, new_room=False)
        with contextlib.suppress(Exception):
            await self.bus.nc.flush(timeout=2)
        self._schedule_expiry(conn)

    async def attach_held(
        self, conn: Connection, attaching: Awaitable[None]
    ) -> tuple[int, ErrorCode, str] | None:
        """Await `attaching` (the attach of a connection whose answer has not started yet):
        None when it is attached and open to be answered; else the HTTP refusal to answer
        with (it failed, or the connection was closed meanwhile), the connection detached."""
        try:
            await attaching
        except Exception as exc:
            log.warning("could not attach a new connection: %s", exc)
            refusal = (503, ErrorCode.UNAVAILABLE, "the node cannot serve you now; retry")
        except BaseException:  # cancelled (the server stops): leave nothing behind
            conn.closed = True
            await self.detach(conn)
            raise
        else:
            if not conn.closed:
                return None
            refusal = conn.refusal()  # closed while attaching: refused, saying why
        conn.closed = True
        await self.detach(conn)
        return refusal

    async def detach(self, conn: Connection) -> None:
        """The connection ended: give back its admission, leave its feeds and the map."""
        self.release(conn.user_id)
        conn.closed = True
        if conn.expiry is not None:
            conn.expiry.cancel()
        self.conns.pop(conn.id, None)
        sequencer = self.sequencers.pop(conn.id, None)
        if sequencer is not None:
            sequencer.close()
        users = self.by_user.get(conn.user_id)
        rooms_left: set[str] | None = None
        if users is not None:
            users.discard(conn)
            if not users:
                del self.by_user[conn.user_id]
                rooms_left = self.user_rooms.pop(conn.user_id, None)
                self._rooms_read_at.pop(conn.user_id, None)
        for room_id in list(conn.rooms):
            feed = self.feeds.get(room_id)
            if feed is None:
                continue
            feed.members.discard(conn)
            if not feed.members:
                await self._drop_feed(feed)
        if not self.stopping:
            await self._unregister(conn.user_id, conn.id)
            if self.presence is not None and conn.user_id not in self.by_user:
                self.presence.disconnected(conn.user_id, rooms_left)

    def _schedule_expiry(self, conn: Connection) -> None:
        if conn.expiry is not None:
            conn.expiry.cancel()
        delay = max(0.0, self.tokens.seconds_left(conn.claims))
        conn.expiry = asyncio.get_running_loop().call_later(
            delay, conn.close_soon, 4401, "token expired"
        )

    async def _load_user_rooms(
        self, user_id: str, force: bool, read: Collection[str] | None = None
    ) -> set[str]:
        """The user's rooms on this node, asked of rooms when `force`d or not known yet;
        `read`: a list the caller has just asked for, taken instead of asking again."""
        if read is not None or force or user_id not in self.user_rooms:
            asked = time.monotonic()
            rooms = set(read) if read is not None else set(await self.bus.user_rooms(user_id))
            self.user_rooms.setdefault(user_id, set()).update(rooms)
            if user_id in self.by_user:  # not for a user whose last connection left meanwhile
                self._rooms_read_at[user_id] = asked
        return self.user_rooms.get(user_id, set())

    # --- feeds --------------------------------------------------------------------------------

    async def _join(self, conn: Connection, room_id: str, new_room: bool) -> None:
        feed = self.feeds.get(room_id)
        if feed is None:
            async with self._feed_lock:
                feed = self.feeds.get(room_id)
                if feed is None:
                    feed = RoomFeed(room_id, RoomOrder(delivered=0 if new_room else None))
                    self.feeds[room_id] = feed
                    try:
                        feed.subscription = await self.bus.subscribe(
                            subjects.message_created(room_id), self._on_room_msg
                        )
                    except BaseException:
                        # no feed without its subscription: this node would never deliver
                        # the room again (a later join subscribes anew)
                        if self.feeds.get(room_id) is feed:
                            del self.feeds[room_id]
                        raise
        feed.members.add(conn)
        conn.view(room_id)

    def catch_up_soon(self) -> None:
        """After a bus outage: messages published meanwhile on room subjects never reached
        this node, and a quiet room would not show the gap; read them from history now."""
        task = asyncio.get_running_loop().create_task(self._catch_up())
        self._tasks.append(task)

    async def _catch_up(self) -> None:
        feeds = [f for f in self.feeds.values() if f.order.delivered is not None]
        for start in range(0, len(feeds), 100):
            chunk = feeds[start : start + 100]
            rooms: dict[str, int | None] = {f.room_id: f.order.delivered for f in chunk}
            for attempt in range(GAP_FILL_ATTEMPTS):
                try:
                    reply = await self.bus.history(HistoryRangeQuery(rooms=rooms, limit=500))
                    break
                except Exception as exc:
                    log.warning("catch-up read failed (attempt %d): %s", attempt + 1, exc)
                    await asyncio.sleep(min(0.2 * (attempt + 1), 2.0))
            else:
                continue
            for feed in chunk:
                got = reply.rooms.get(feed.room_id)
                if got is not None and self.feeds.get(feed.room_id) is feed:
                    self._release(feed, feed.order.fill(got.messages))
        log.info("caught up %d rooms after a bus reconnect", len(feeds))

    async def _flush(self) -> None:
        """Make new subscriptions effective before the client hears of the room."""
        try:
            await self.bus.nc.flush(timeout=2)
        except Exception as exc:
            log.warning("nats flush failed: %s", exc)

    async def _drop_feed(self, feed: RoomFeed) -> None:
        self.feeds.pop(feed.room_id, None)
        if feed.filling is not None:
            feed.filling.cancel()
        if feed.subscription is not None:
            with contextlib.suppress(Exception):
                await feed.subscription.unsubscribe()

    async def _on_room_msg(self, msg: Msg) -> None:
        try:
            event = MessageCreated.model_validate_json(msg.data)
        except ValidationError:
            log.warning("undecodable MessageCreated on %s", msg.subject)
            return
        adopt(event, msg.headers)
        feed = self.feeds.get(event.message.roomId)
        if feed is None:
            return
        log.debug(
            "push message_created seq %d to %d local connections",
            event.message.seq,
            len(feed.members),
            extra={"room_id": event.message.roomId},
        )
        delivered = feed.order.delivered
        if event.origin is not None and (delivered is None or event.message.seq > delivered):
            feed.origins[event.message.seq] = event.origin
        self._release(feed, feed.order.offer(event.message))
        self._resolved(event.origin, event.message.roomId, event.message.messageId)
        if feed.order.gap() is not None and feed.filling is None:
            feed.filling = asyncio.create_task(self._fill_gap(feed))

    async def _fill_gap(self, feed: RoomFeed) -> None:
        """Read missing seqs from history before releasing anything newer."""
        try:
            attempts = 0
            while (gap := feed.order.gap()) is not None:
                after, up_to = gap
                try:
                    reply = await self.bus.history(
                        HistoryRangeQuery(rooms={feed.room_id: after}, limit=500)
                    )
                    got = reply.rooms.get(feed.room_id)
                    found = [m for m in (got.messages if got else []) if m.seq <= up_to]
                    self._release(feed, feed.order.fill(found))
                    if not found:
                        attempts += 1
                except Exception as exc:
                    attempts += 1
                    log.warning("gap fill for %s failed: %s", feed.room_id, exc)
                if attempts >= GAP_FILL_ATTEMPTS:
                    # history is unreachable: release what we have; clients sync the rest
                    first = min(feed.order.pending)
                    feed.order.delivered = first - 1
                    self._release(feed, feed.order.fill([]))
                    log.error("gave up filling gap in %s before seq %d", feed.room_id, first)
                    attempts = 0
                if feed.order.gap() is not None:
                    await asyncio.sleep(min(0.05 * (attempts + 1), 1.0))
        finally:
            feed.filling = None

    def _release(self, feed: RoomFeed, messages: list[Message]) -> None:
        for message in messages:
            text = encode(MessageCreatedFrame(message=message))
            frame = text_frame(text.encode())  # the same bytes for every socket
            origin = feed.origins.pop(message.seq, None)
            for conn in feed.members:
                if origin is not None and origin.conn == conn.id and origin.requestId:
                    answer = MessageCreatedFrame(message=message, requestId=origin.requestId)
                    self._send_message(conn, message.roomId, message.seq, encode(answer))
                else:
                    self._send_message(conn, message.roomId, message.seq, text, frame)

    def _send_message(
        self, conn: Connection, room_id: str, seq: int, text: str, frame: bytes | None = None
    ) -> None:
        view = conn.view(room_id)
        if seq in view.sent:
            return
        if view.syncing:
            view.held.append((seq, text))
            return
        view.sent.add(seq)
        conn.push(text, frame)

    # --- node subject: rejections, direct answers, user-targeted frames -----------------------

    async def _on_node_msg(self, msg: Msg) -> None:
        for listener in self.node_listeners:
            listener(msg.data)
        try:
            kind = orjson.loads(msg.data).get("event")
            if kind == "CommandRejected":
                rejected = CommandRejected.model_validate_json(msg.data)
                self._resolved(rejected.origin, rejected.roomId, rejected.messageId)
                conn = self.conns.get(rejected.origin.conn or "")
                if conn is not None:
                    conn.push(
                        encode(
                            ErrorFrame(
                                error=rejected.error,
                                requestId=rejected.origin.requestId,
                                messageId=rejected.messageId,
                                roomId=rejected.roomId,
                            )
                        )
                    )
            elif kind == "MessageCreated":
                answer = MessageCreated.model_validate_json(msg.data)
                self._resolved(answer.origin, answer.message.roomId, answer.message.messageId)
                origin = answer.origin
                conn = self.conns.get(origin.conn or "") if origin else None
                if conn is not None and origin is not None:
                    # the answer to this connection's own retry: sent even if sent before
                    m = answer.message
                    conn.view(m.roomId).sent.add(m.seq)
                    conn.push(encode(MessageCreatedFrame(message=m, requestId=origin.requestId)))
            elif kind == "DeliverToUsers":
                await self._deliver_to_users(DeliverToUsers.model_validate_json(msg.data))
        except (ValidationError, orjson.JSONDecodeError, AttributeError) as exc:
            log.warning("bad node message: %s", exc)

    async def _deliver_to_users(self, delivery: DeliverToUsers) -> None:
        frame = delivery.frame
        if frame.get("type") != "room_created":
            text = orjson.dumps(frame).decode()
            for user_id in delivery.userIds:
                for conn in self.by_user.get(user_id, ()):
                    conn.push(text)
            return
        room = Room.model_validate(frame["room"])
        await self._announce_room(room, delivery.userIds, delivery.origin)

    async def _announce_room(self, room: Room, user_ids: list[str], origin: Origin | None) -> None:
        plain = encode(RoomCreatedFrame(room=room))
        targets = [c for user_id in user_ids for c in list(self.by_user.get(user_id, ()))]
        for conn in targets:
            self.user_rooms.setdefault(conn.user_id, set()).add(room.id)
            await self._join(conn, room.id, new_room=True)
        if targets:
            await self._flush()
        for conn in targets:
            if room.id in conn.announced_rooms:
                continue
            conn.announced_rooms.add(room.id)
            text = plain
            if origin is not None and origin.conn == conn.id:
                if origin.requestId:
                    text = encode(RoomCreatedFrame(room=room, requestId=origin.requestId))
                for request_id, answered in self._creating.get(conn.id, {}).values():
                    if request_id == origin.requestId:
                        answered.add(room.id)
            conn.push(text)

    async def _router_loop(self) -> None:
        """Route RoomCreated to the nodes holding a participant (one edge handles each event:
        all edges share the durable consumer); each event is handled as soon as it arrives."""
        while not self.stopping:
            try:
                await self.bus.js.add_consumer(
                    subjects.EVENTS_STREAM,
                    config=ConsumerConfig(
                        durable_name=subjects.EDGE_ROOM_ROUTER_CONSUMER,
                        filter_subject=subjects.ROOM_CREATED,
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.NEW,
                        ack_wait=10,
                        max_ack_pending=1000,
                    ),
                )
                break
            except BadRequestError:
                break  # exists already (another edge made it)
            except Exception as exc:
                log.warning("router consumer not ready: %s", exc)
                await asyncio.sleep(1)
        if self.stopping:
            return
        self._router = ContinuousPull(
            self.bus.nc,
            subjects.EVENTS_STREAM,
            subjects.EDGE_ROOM_ROUTER_CONSUMER,
            self._route_room_created,
            batch=64,
        )
        await self._router.start()

    async def _route_room_created(self, msg: Msg) -> None:
        try:
            event = RoomCreated.model_validate_json(msg.data)
        except ValidationError:
            log.warning("undecodable RoomCreated")
            await msg.term()
            return
        try:
            user_ids = [p.id for p in event.room.participants]
            nodes = await self.connmap.nodes_of(user_ids)
            frame = RoomCreatedFrame(room=event.room).model_dump(exclude_none=True)
            for node, users in nodes.items():
                delivery = DeliverToUsers(
                    userIds=users,
                    frame=frame,
                    subscribeRoom=event.room.id,
                    origin=event.origin,
                )
                await self.bus.nc.publish(subjects.node(node), delivery.model_dump_json().encode())
            await msg.ack()
        except Exception as exc:
            log.warning("routing RoomCreated failed, will retry: %s", exc)
            await msg.nak(delay=1)

    # --- actions ------------------------------------------------------------------------------

    async def handle(self, conn: Connection, action: ClientAction) -> None:
        # the frame's requestId (or a new id) follows the action through the bus to the store
        # write and the pushes, in every log line (infra.logs) and bus payload (infra.bus.stamp)
        correlation_id.set(action.requestId or new_correlation_id())
        labelled(WS_FRAMES_IN, action.action).inc()
        started = time.perf_counter()
        try:
            if isinstance(action, CreateMessageAction):
                await self._create_message(conn, action)
            elif isinstance(action, CreateRoomAction):
                await self._create_room(conn, action)
            elif isinstance(action, SyncAction):
                await self._sync(conn, action)
            elif isinstance(action, RefreshAction):
                self._refresh(conn, action)
        except TimeoutError:
            conn.push(
                encode(
                    error_frame(
                        ErrorCode.UNAVAILABLE,
                        "a service did not answer in time; retry",
                        action.requestId,
                        getattr(action, "messageId", None),
                    )
                )
            )
        except Exception as exc:
            log.exception("action %s failed", action.action)
            conn.push(
                encode(
                    error_frame(
                        ErrorCode.UNAVAILABLE,
                        f"temporarily unavailable ({type(exc).__name__}); retry",
                        action.requestId,
                        getattr(action, "messageId", None),
                    )
                )
            )
        finally:
            labelled(COMMAND_LATENCY, action.action).observe(time.perf_counter() - started)

    def _origin(self, conn: Connection, request_id: str | None) -> Origin:
        return Origin(node=self.node, conn=conn.id, requestId=request_id)

    async def _is_member(self, user_id: str, room_id: str) -> bool:
        if room_id in self.user_rooms.get(user_id, ()):
            return True
        rooms = await self._load_user_rooms(user_id, force=True)
        return room_id in rooms

    async def _create_message(self, conn: Connection, action: CreateMessageAction) -> None:
        def refuse(code: ErrorCode, text: str) -> None:
            conn.refuse(
                encode(error_frame(code, text, action.requestId, action.messageId, action.roomId))
            )

        if action.senderId != conn.user_id:
            refuse(ErrorCode.SENDER_MISMATCH, "senderId must be the connection's own user")
            return
        try:
            check_not_in_future(action.createdAt)
        except ValueError as exc:
            refuse(ErrorCode.INVALID_CREATED_AT, str(exc))
            return
        if not await self._is_member(conn.user_id, action.roomId):
            reply = await self.bus.get_room(action.roomId)
            if reply.room is None:
                refuse(ErrorCode.UNKNOWN_ROOM, "no such room")
            else:
                refuse(ErrorCode.NOT_PARTICIPANT, "you are not a participant of this room")
            return
        if action.roomId not in conn.rooms:
            await self._join(conn, action.roomId, new_room=False)
        accepted = await self._sequencer(conn).submit(
            CreateMessageCommand(
                correlationId=correlation_id.get(),
                userId=conn.user_id,
                roomId=action.roomId,
                messageId=action.messageId,
                content=action.content,
                createdAt=action.createdAt,
                origin=self._origin(conn, action.requestId),
            )
        )
        if not accepted:
            refuse(ErrorCode.RATE_LIMITED, "too many messages waiting for this room; slow down")

    def _sequencer(self, conn: Connection) -> RoomSequencer:
        sequencer = self.sequencers.get(conn.id)
        if sequencer is None:

            def failed(command: CreateMessageCommand, exc: Exception) -> None:
                origin = command.origin
                conn.push(
                    encode(
                        error_frame(
                            ErrorCode.UNAVAILABLE,
                            f"message not accepted ({type(exc).__name__}); retry",
                            origin.requestId if origin else None,
                            command.messageId,
                            command.roomId,
                        )
                    )
                )

            sequencer = RoomSequencer(
                self.bus.send_message,
                failed,
                timeout=self.settings.bus_timeout_seconds * 2,
                max_queued=self.settings.rate_burst,
            )
            self.sequencers[conn.id] = sequencer
        return sequencer

    def _resolved(self, origin: Origin | None, room_id: str | None, message_id: str | None) -> None:
        """A command of one of this node's connections was stored or refused."""
        if origin is None or origin.node != self.node or not room_id or not message_id:
            return
        sequencer = self.sequencers.get(origin.conn or "")
        if sequencer is not None:
            sequencer.resolved(room_id, message_id)

    async def _create_room(self, conn: Connection, action: CreateRoomAction) -> None:
        # what the router announces to this connection as the answer to this call (same
        # requestId) while the call is out, until its own answer is given
        answered: set[str] = set()
        calls = self._creating.setdefault(conn.id, {})
        calls[id(answered)] = (action.requestId, answered)
        try:
            await self._create_room_call(conn, action, answered)
        finally:
            calls.pop(id(answered), None)
            if not calls:
                self._creating.pop(conn.id, None)

    async def _create_room_call(
        self, conn: Connection, action: CreateRoomAction, answered: set[str]
    ) -> None:
        reply = await self.bus.create_room(
            CreateRoomCommand(
                correlationId=correlation_id.get(),
                userId=conn.user_id,
                participants=action.participants,
                origin=self._origin(conn, action.requestId),
                idempotencyKey=action.idempotencyKey,
            )
        )
        if reply.room is None:
            error = reply.error
            text = encode(
                error_frame(
                    error.code if error else ErrorCode.UNAVAILABLE,
                    error.message if error else "room not created",
                    action.requestId,
                )
            )
            if error is not None and error.code != ErrorCode.UNAVAILABLE:
                conn.refuse(text)  # the client's request was refused (bad participants, ...)
            else:
                conn.push(text)
            return
        # the creator's connection hears at once; the other connections via the router
        self.user_rooms.setdefault(conn.user_id, set()).add(reply.room.id)
        await self._join(conn, reply.room.id, new_room=True)
        await self._flush()
        if reply.room.id in answered:
            return  # the router's announcement to this connection was this call's answer
        # Answered even when the room was announced to this connection before: that is a
        # retry with the same idempotencyKey, and its answer is the room (as a message's retry
        # is answered with the stored message).
        conn.announced_rooms.add(reply.room.id)
        conn.push(encode(RoomCreatedFrame(room=reply.room, requestId=action.requestId)))

    async def _sync(self, conn: Connection, action: SyncAction) -> None:
        read_at = self._rooms_read_at.get(conn.user_id)
        fresh = read_at is not None and time.monotonic() - read_at < SYNC_ROOMS_FRESH_SECONDS
        rooms = await self._load_user_rooms(conn.user_id, force=not fresh)
        named: dict[str, int] = {}
        for room_id, last in action.rooms.items():
            if room_id in rooms:
                named[room_id] = last
            else:  # each one a refusal: a sync naming many rooms not yours is abusive
                conn.refuse(
                    encode(
                        error_frame(
                            ErrorCode.NOT_PARTICIPANT,
                            "not a room of yours (left out of the sync)",
                            action.requestId,
                            room_id=room_id,
                        )
                    )
                )
        for room_id in rooms:
            if room_id not in conn.rooms:
                await self._join(conn, room_id, new_room=False)
        for room_id in named:
            conn.view(room_id).syncing = True
        try:
            query: dict[str, int | None] = {r: None for r in rooms}
            query.update(named)
            reply = await self.bus.history(
                HistoryRangeQuery(rooms=query, limit=self.settings.sync_replay_limit)
            )
        except BaseException:
            for room_id in named:
                self._end_sync(conn, room_id)
            raise
        truncated: list[str] = []
        latest: dict[str, int] = {}
        for room_id in rooms:
            got = reply.rooms.get(room_id)
            view = conn.view(room_id)
            if room_id in named and got is not None:
                for message in got.messages:
                    if message.seq not in view.sent:
                        view.sent.add(message.seq)
                        conn.push(encode(MessageCreatedFrame(message=message)))
                if got.truncated:
                    truncated.append(room_id)
            if room_id in named:
                self._end_sync(conn, room_id)
            latest[room_id] = max(got.latest if got else 0, view.sent.highest)
        conn.push(
            encode(
                SyncedFrame(rooms=latest, truncated=truncated or None, requestId=action.requestId)
            )
        )

    def _end_sync(self, conn: Connection, room_id: str) -> None:
        view = conn.view(room_id)
        view.syncing = False
        held, view.held = sorted(view.held), []
        for seq, text in held:
            if seq not in view.sent:
                view.sent.add(seq)
                conn.push(text)

    def _refresh(self, conn: Connection, action: RefreshAction) -> None:
        try:
            claims = self.tokens.verify(action.token)
        except ChatError as exc:
            conn.refuse(encode(error_frame(exc.code, exc.message, action.requestId)))
            return
        if claims.user_id != conn.user_id:
            conn.refuse(
                encode(
                    error_frame(
                        ErrorCode.FORBIDDEN, "token belongs to another user", action.requestId
                    )
                )
            )
            return
        conn.claims = claims
        self._schedule_expiry(conn)
        conn.push(
            encode(RefreshedFrame(expiresAt=claims.expires_at_iso, requestId=action.requestId))
        )

    def now(self) -> float:
        return time.monotonic()
