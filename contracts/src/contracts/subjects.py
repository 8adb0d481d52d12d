"""NATS subject names, JetStream streams and durable consumers: the one place they are named."""

from __future__ import annotations

PREFIX = "chat"

# JetStream streams
COMMANDS_STREAM = "CHAT_COMMANDS"  # durable commands (create_message), work queue for history
EVENTS_STREAM = "CHAT_EVENTS"  # every domain event, kept for read models and replay

# Commands
CREATE_MESSAGE_PREFIX = f"{PREFIX}.cmd.create_message"  # .<roomId>, in COMMANDS_STREAM
CREATE_MESSAGE_ALL = f"{CREATE_MESSAGE_PREFIX}.>"
CREATE_ROOM = f"{PREFIX}.cmd.create_room"  # core request/reply to rooms (queue group)

# Events (captured by EVENTS_STREAM)
USER_CREATED = f"{PREFIX}.evt.user_created"
ROOM_CREATED = f"{PREFIX}.evt.room_created"
MESSAGE_CREATED_PREFIX = f"{PREFIX}.evt.message_created"  # .<roomId>: edges subscribe per room
MESSAGE_CREATED_ALL = f"{MESSAGE_CREATED_PREFIX}.>"
EVENTS_ALL = f"{PREFIX}.evt.>"
# What EVENTS_STREAM keeps: the events read models are built from. MessageCreated is not kept:
# the store is the record of messages (edges fill gaps and sync from history), and storing
# every message a second time in JetStream cost the bus a third of its CPU per message.
CAPTURED_EVENTS = (USER_CREATED, ROOM_CREATED)
# Presence changes (core NATS, not captured): every edge node listens and pushes `presence`
# frames to its local connections that share one of the user's rooms
PRESENCE_CHANGED = f"{PREFIX}.presence.changed"

# Queries (core request/reply, queue groups)
GET_USERS = f"{PREFIX}.q.users.get"
GET_ROOM = f"{PREFIX}.q.rooms.get"
USER_ROOMS = f"{PREFIX}.q.rooms.of_user"
HISTORY_RANGE = f"{PREFIX}.q.history.range"

# Per edge node: rejections, user-targeted frames (room_created, presence)
NODE_PREFIX = f"{PREFIX}.node"

# Durable consumers
HISTORY_COMMANDS_CONSUMER = "history-create-message"
ROOMS_USERS_CONSUMER = "rooms-user-created"
HISTORY_ROOMS_CONSUMER = "history-room-created"
EDGE_ROOM_ROUTER_CONSUMER = "edge-room-router"

# Queue groups
Q_USERS = "users"
Q_ROOMS = "rooms"
Q_HISTORY = "history"
Q_EDGE_ROUTER = "edge-router"


def create_message(room_id: str) -> str:
    return f"{CREATE_MESSAGE_PREFIX}.{room_id}"


def message_created(room_id: str) -> str:
    return f"{MESSAGE_CREATED_PREFIX}.{room_id}"


def node(node_id: str) -> str:
    return f"{NODE_PREFIX}.{node_id}"
