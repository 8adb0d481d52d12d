"""The lean DynamoDB client signs exactly as botocore does and speaks the real protocol."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from infra.dynamo_http import DynamoHttpClient, SigV4
from infra.settings import CommonSettings
from infra.store import is_conditional_failure, open_dynamo
from mesh.testing import Infra


def test_signature_matches_botocore() -> None:
    """For the same request and instant, our Authorization header equals botocore's."""
    moment = dt.datetime(2026, 12, 4, 17, 30, 5, tzinfo=dt.UTC)
    body = b'{"TableName":"t","Key":{"pk":{"S":"a"}}}'
    ours = SigV4("AKIDEXAMPLE", "secret/key+1", "eu-west-1", "dynamodb").headers(
        "dynamodb.eu-west-1.amazonaws.com", "DynamoDB_20120810.GetItem", body, moment
    )
    request = AWSRequest(
        method="POST",
        url="https://dynamodb.eu-west-1.amazonaws.com/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810.GetItem",
        },
    )
    stamp = moment.strftime("%Y%m%dT%H%M%SZ")
    request.context["timestamp"] = stamp
    request.headers["X-Amz-Date"] = stamp
    signer = SigV4Auth(Credentials("AKIDEXAMPLE", "secret/key+1"), "dynamodb", "eu-west-1")
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    assert ours["X-Amz-Date"] == stamp
    assert ours["Authorization"].endswith(f"Signature={signature}")
    assert signer.signed_headers(signer.headers_to_sign(request)) in ours["Authorization"]


@pytest.fixture
async def client(infra: Infra) -> AsyncIterator[DynamoHttpClient]:
    """The lean client on the session's store."""
    settings = CommonSettings(dynamo_url=infra.dynamo_url, table_prefix=infra.table_prefix)
    async with open_dynamo(settings) as opened:
        assert isinstance(opened, DynamoHttpClient)
        yield opened


async def test_conditional_put_query_and_errors(client: DynamoHttpClient, infra: Infra) -> None:
    """Conditional puts, a consistent query and a refused condition behave like botocore's."""
    table = f"{infra.table_prefix}messages"
    item = {"pk": {"S": "room_http"}, "sk": {"N": "1"}, "content": {"S": "é ok"}}
    await client.put_item(
        TableName=table, Item=item, ConditionExpression="attribute_not_exists(pk)"
    )
    with pytest.raises(ClientError) as refused:
        await client.put_item(
            TableName=table, Item=item, ConditionExpression="attribute_not_exists(pk)"
        )
    assert is_conditional_failure(refused.value)
    page = await client.query(
        TableName=table,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "room_http"}},
        ConsistentRead=True,
    )
    assert page["Items"] == [item]
    with pytest.raises(ClientError) as missing:
        await client.get_item(TableName="no_such_table", Key={"pk": {"S": "x"}})
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"


async def test_unreachable_store_is_a_client_error() -> None:
    """A store that does not answer ends in a ClientError after bounded retries."""
    lean = DynamoHttpClient("http://127.0.0.1:9", "us-east-1", "a", "b", max_attempts=2)
    try:
        with pytest.raises(ClientError):
            await lean.get_item(TableName="t", Key={"pk": {"S": "x"}})
    finally:
        await lean.close()
