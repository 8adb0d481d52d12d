"""The DynamoDB-compatible store: client creation and attribute (un)marshalling.

Only single-item conditional writes, batch writes and queries are used anywhere, so the same
code runs on AWS DynamoDB, ScyllaDB Alternator and dynalite (no transactions, TTL or streams).

Conditions and key conditions are written in the API's legacy parameter forms (`Expected`,
`KeyConditions`, `AttributesToGet`: `if_absent`, `key_conditions`), which all three stores
accept with the same meaning. Why: dynalite, the embedded store, runs a PEG parser over every
expression on every request; measured on this project's 2-core machine, a conditional PutItem
costs it 146 us of CPU with `Expected` and 222 us with `ConditionExpression`
(docs/performance.md), and the store is the largest single cost of a stored message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from infra.dynamo_http import DynamoHttpClient
from infra.settings import CommonSettings

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb.client import DynamoDBClient
else:
    DynamoDBClient = Any

Item = dict[str, Any]

__all__ = [
    "DynamoDBClient",
    "Item",
    "from_attr",
    "from_item",
    "if_absent",
    "is_conditional_failure",
    "key_conditions",
    "open_dynamo",
    "open_dynamo_admin",
    "to_attr",
    "to_item",
]


@asynccontextmanager
async def open_dynamo(settings: CommonSettings) -> AsyncIterator[DynamoDBClient]:
    """The data-plane client of the services: `infra.dynamo_http` (same calls and answers as
    botocore's client, a fraction of its CPU per call), bounded timeouts, retries with backoff
    on throttling, 5xx and connection errors (the store may restart under us)."""
    client = DynamoHttpClient(
        settings.dynamo_url,
        settings.aws_region,
        settings.aws_access_key_id,
        settings.aws_secret_access_key,
        lanes=settings.dynamo_lanes,
    )
    try:
        # It implements the subset of DynamoDBClient the services call (same signatures).
        yield cast(DynamoDBClient, client)
    finally:
        await client.close()


@asynccontextmanager
async def open_dynamo_admin(settings: CommonSettings) -> AsyncIterator[DynamoDBClient]:
    """aiobotocore's full client, for the control plane (provisioning tables)."""
    session = get_session()
    config = AioConfig(
        connect_timeout=3,
        read_timeout=10,
        retries={"max_attempts": 6, "mode": "standard"},
        max_pool_connections=16,
    )
    async with session.create_client(
        "dynamodb",
        endpoint_url=settings.dynamo_url or None,
        region_name=settings.aws_region,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        config=config,
    ) as client:
        yield client


def to_attr(value: Any) -> dict[str, Any]:
    """Python value -> DynamoDB attribute value."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, int | float | Decimal):
        return {"N": str(value)}
    if value is None:
        return {"NULL": True}
    if isinstance(value, list | tuple):
        return {"L": [to_attr(v) for v in value]}
    if isinstance(value, dict):
        return {"M": {str(k): to_attr(v) for k, v in value.items()}}
    raise TypeError(f"cannot store {type(value).__name__}")


def from_attr(attr: dict[str, Any]) -> Any:
    """DynamoDB attribute value -> Python value (numbers as int when integral)."""
    (kind, value), *_ = attr.items()
    if kind == "S":
        return value
    if kind == "N":
        number = Decimal(value)
        return int(number) if number == number.to_integral_value() else float(number)
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    if kind == "L":
        return [from_attr(v) for v in value]
    if kind == "M":
        return {k: from_attr(v) for k, v in value.items()}
    if kind == "SS":
        return list(value)
    raise TypeError(f"unsupported attribute type {kind}")


def if_absent(key_attribute: str) -> dict[str, Any]:
    """PutItem parameters: write only if no item has this key (`attribute_not_exists`)."""
    return {"Expected": {key_attribute: {"Exists": False}}}


def key_conditions(
    partition: tuple[str, Any], sort: tuple[str, str, tuple[Any, ...]] | None = None
) -> dict[str, Any]:
    """Query parameters: partition key equal to a value, and optionally a sort-key condition
    (name, operator, values), e.g. `key_conditions(("pk", room), ("sk", "GT", (5,)))`.
    Operators: EQ, LT, LE, GT, GE, BETWEEN (two values), BEGINS_WITH."""
    name, value = partition
    conditions = {name: {"AttributeValueList": [to_attr(value)], "ComparisonOperator": "EQ"}}
    if sort is not None:
        sort_name, operator, values = sort
        conditions[sort_name] = {
            "AttributeValueList": [to_attr(v) for v in values],
            "ComparisonOperator": operator,
        }
    return {"KeyConditions": conditions}


async def query_pages(
    query: Callable[..., Awaitable[Any]],
    request: Mapping[str, Any],
    wanted: int | None = None,
    start: Mapping[str, Any] | None = None,
) -> AsyncIterator[Mapping[str, Any]]:
    """The pages of a Query (`query(**request)`), in order, from `start` on. A page can end
    short of its Limit (the store answers at most 1 MB at a time), so reading a partition, or
    a number of its items, may take several. With `wanted`, each page asks for no more items
    (or, with `Select: COUNT`, no more counted) than are still wanted, and no page is read
    once that many came; the first page is always read."""
    got = 0
    while True:
        page_request = dict(request)
        if wanted is not None:
            page_request["Limit"] = max(1, wanted - got)
        if start:
            page_request["ExclusiveStartKey"] = start
        page: Mapping[str, Any] = await query(**page_request)
        yield page
        got += len(page["Items"]) if "Items" in page else int(page.get("Count", 0))
        start = page.get("LastEvaluatedKey")
        if not start or (wanted is not None and got >= wanted):
            return


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: to_attr(v) for k, v in values.items() if v is not None}


def from_item(item: dict[str, Any]) -> Item:
    return {k: from_attr(v) for k, v in item.items()}


def is_conditional_failure(exc: BaseException) -> bool:
    """True when a conditional write was refused because the condition did not hold."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = response.get("Error", {}).get("Code", "")
    return bool(code == "ConditionalCheckFailedException")
