"""Idempotent provisioning of the store's tables and the bus's streams.

The deployment's data layout lives here, in one place, because it is shared by `make run`, the
test fixtures and production (`python -m infra.provision` against AWS DynamoDB and a NATS
cluster). Running it twice changes nothing. Services own their tables' *contents*; they never
read another service's table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from contracts import subjects
from infra.bus import connect_nats
from infra.settings import CommonSettings
from infra.store import DynamoDBClient, open_dynamo_admin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableSpec:
    name: str  # without the prefix
    owner: str
    sort_key_type: str  # "S" or "N"
    purpose: str


TABLES: tuple[TableSpec, ...] = (
    TableSpec("users", "users", "S", "users (pk=users, sk=user id: creation order)"),
    TableSpec("rooms", "rooms", "S", "rooms, memberships, known users, outbox"),
    TableSpec("messages", "history", "N", "messages (pk=room id, sk=seq): the truth of order"),
    TableSpec("history_meta", "history", "S", "message-id claims, room participants"),
)


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: RetentionPolicy
    max_age_seconds: int
    # what a full stream does: NEW refuses the publish (the sender is told and retries), OLD
    # drops the oldest message
    discard: DiscardPolicy
    purpose: str


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(
        subjects.COMMANDS_STREAM,
        (subjects.CREATE_MESSAGE_ALL,),
        RetentionPolicy.WORK_QUEUE,
        7 * 24 * 3600,
        # a command not yet stored must never be dropped to make room: refuse new ones instead
        DiscardPolicy.NEW,
        "create_message commands; removed once history acknowledged them (after the store write)",
    ),
    StreamSpec(
        subjects.EVENTS_STREAM,
        subjects.CAPTURED_EVENTS,
        RetentionPolicy.LIMITS,
        3 * 24 * 3600,
        DiscardPolicy.OLD,  # an event log: the oldest events go first
        "user and room events, for the read models' durable consumers and replay",
    ),
)


async def ensure_tables(client: DynamoDBClient, prefix: str) -> list[str]:
    """Create any missing table (pk S + sk S/N, on-demand capacity) and wait until active."""
    existing: set[str] = set()
    paginator_start: str | None = None
    while True:
        kwargs = {"ExclusiveStartTableName": paginator_start} if paginator_start else {}
        page = await client.list_tables(**kwargs)  # type: ignore[arg-type]
        existing.update(page.get("TableNames", []))
        paginator_start = page.get("LastEvaluatedTableName")
        if not paginator_start:
            break
    created = []
    for spec in TABLES:
        name = prefix + spec.name
        if name in existing:
            continue
        try:
            await client.create_table(
                TableName=name,
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": spec.sort_key_type},  # type: ignore[typeddict-item]
                ],
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
            created.append(name)
        except client.exceptions.ResourceInUseException:
            pass  # created concurrently: fine
    for spec in TABLES:
        name = prefix + spec.name
        for _ in range(600):
            desc = await client.describe_table(TableName=name)
            if desc["Table"].get("TableStatus") == "ACTIVE":
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError(f"table {name} did not become active")
    return created


STREAM_MAX_BYTES = 2 * 1024**3


async def ensure_streams(
    settings: CommonSettings, replicas: int = 1, max_bytes: int = STREAM_MAX_BYTES
) -> list[str]:
    """Create or update the JetStream streams (file storage, bounded, deduplicating)."""
    nc = await connect_nats(settings, "provision")
    changed = []
    try:
        js = nc.jetstream(timeout=10)
        for spec in STREAMS:
            config = StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                retention=spec.retention,
                storage=StorageType.FILE,
                num_replicas=replicas,
                max_age=float(spec.max_age_seconds),
                max_bytes=max_bytes,
                max_msg_size=256 * 1024,
                discard=spec.discard,
                duplicate_window=120.0,
            )
            try:
                await js.stream_info(spec.name)
                try:
                    await js.update_stream(config)
                except BadRequestError as exc:
                    log.warning("stream %s kept as is: %s", spec.name, exc)
            except NotFoundError:
                await js.add_stream(config)
                changed.append(spec.name)
    finally:
        await nc.drain()
    return changed


async def provision(settings: CommonSettings, replicas: int = 1) -> None:
    async with open_dynamo_admin(settings) as client:
        tables = await ensure_tables(client, settings.table_prefix)
    streams = await ensure_streams(settings, replicas)
    log.info("provisioned: new tables %s, new streams %s", tables, streams)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Create the chat mesh's tables and streams (idempotent). Addresses come "
        "from CHAT_DYNAMO_URL (empty: AWS), CHAT_NATS_URLS, CHAT_TABLE_PREFIX."
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="JetStream replicas (3 on a cluster)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asyncio.run(provision(CommonSettings(), args.replicas))
    print("provisioned")


if __name__ == "__main__":
    main()
