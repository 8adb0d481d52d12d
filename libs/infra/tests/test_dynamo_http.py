"""The lean DynamoDB client signs exactly as botocore does and speaks the real protocol:
against dynalite, and against a scripted local HTTP/1.1 server for the connection handling
(reuse, server closes, split reads, chunked, timeouts, errors and retries, TLS)."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from infra.dynamo_http import DynamoHttpClient, SigV4
from infra.settings import CommonSettings
from infra.store import if_absent, is_conditional_failure, key_conditions, open_dynamo
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


async def test_legacy_condition_forms_mean_what_the_expressions_mean(
    client: DynamoHttpClient, infra: Infra
) -> None:
    """`if_absent` refuses an existing key like `attribute_not_exists`, and `key_conditions`
    selects what the same KeyConditionExpression does, for every operator the services use."""
    table = f"{infra.table_prefix}messages"
    room = "room_legacy"
    for seq in range(1, 8):
        item = {"pk": {"S": room}, "sk": {"N": str(seq)}, "messageId": {"S": f"m{seq}"}}
        await client.put_item(TableName=table, Item=item, **if_absent("pk"))
    with pytest.raises(ClientError) as refused:
        await client.put_item(
            TableName=table,
            Item={"pk": {"S": room}, "sk": {"N": "3"}, "messageId": {"S": "other"}},
            **if_absent("pk"),
        )
    assert is_conditional_failure(refused.value)
    cases: list[tuple[tuple[str, str, tuple[int, ...]] | None, str, dict[str, Any]]] = [
        (None, "pk = :p", {}),
        (("sk", "GT", (5,)), "pk = :p AND sk > :a", {":a": {"N": "5"}}),
        (("sk", "LT", (3,)), "pk = :p AND sk < :a", {":a": {"N": "3"}}),
        (
            ("sk", "BETWEEN", (2, 4)),
            "pk = :p AND sk BETWEEN :a AND :b",
            {":a": {"N": "2"}, ":b": {"N": "4"}},
        ),
    ]
    for sort, expression, values in cases:
        legacy = await client.query(
            TableName=table, **key_conditions(("pk", room), sort), ConsistentRead=True
        )
        modern = await client.query(
            TableName=table,
            KeyConditionExpression=expression,
            ExpressionAttributeValues={":p": {"S": room}, **values},
            ConsistentRead=True,
        )
        assert legacy["Items"] == modern["Items"]
        assert legacy["Items"]  # every case selects something
    seqs = [
        int(i["sk"]["N"])
        for i in (
            await client.query(
                TableName=table,
                **key_conditions(("pk", room), ("sk", "BETWEEN", (2, 4))),
                ConsistentRead=True,
            )
        )["Items"]
    ]
    assert seqs == [2, 3, 4]
    newest = await client.query(
        TableName=table,
        **key_conditions(("pk", room)),
        AttributesToGet=["sk"],
        ScanIndexForward=False,
        Limit=1,
        ConsistentRead=True,
    )
    assert newest["Items"] == [{"sk": {"N": "7"}}]
    stored = await client.get_item(TableName=table, Key={"pk": {"S": room}, "sk": {"N": "3"}})
    assert stored["Item"]["messageId"] == {"S": "m3"}  # the refused put changed nothing


async def test_unreachable_store_is_a_client_error() -> None:
    """A store that does not answer ends in a ClientError after bounded retries."""
    lean = DynamoHttpClient("http://127.0.0.1:9", "us-east-1", "a", "b", max_attempts=2)
    try:
        with pytest.raises(ClientError):
            await lean.get_item(TableName="t", Key={"pk": {"S": "x"}})
    finally:
        await lean.close()


async def test_concurrent_calls_share_a_small_pool(infra: Infra) -> None:
    """More concurrent calls than pooled connections: they wait for a connection, all succeed."""
    small = DynamoHttpClient(infra.dynamo_url, "us-east-1", "local", "local", pool_size=4)
    table = f"{infra.table_prefix}messages"
    try:
        await asyncio.gather(
            *(
                small.put_item(
                    TableName=table,
                    Item={"pk": {"S": "room_pool"}, "sk": {"N": str(n)}},
                    ConditionExpression="attribute_not_exists(pk)",
                )
                for n in range(100)
            )
        )
        assert len(small._connections) <= 4
        page = await small.query(
            TableName=table,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "room_pool"}},
            Select="COUNT",
        )
        assert page["Count"] == 100
    finally:
        await small.close()


def test_signature_cache_across_days_and_targets() -> None:
    """One signer used at several instants and targets signs as a fresh signer would."""
    shared = SigV4("AKID", "secret", "eu-west-1", "dynamodb")
    for moment in (
        dt.datetime(2026, 12, 4, 23, 59, 59, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 5, 0, 0, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 4, 23, 59, 59, tzinfo=dt.UTC),
    ):
        for target in ("DynamoDB_20120810.PutItem", "DynamoDB_20120810.Query"):
            for host in ("h:1", "h:2"):
                fresh = SigV4("AKID", "secret", "eu-west-1", "dynamodb")
                body = f"{moment}{target}".encode()
                assert shared.headers(host, target, body, moment) == fresh.headers(
                    host, target, body, moment
                )


# -- the HTTP/1.1 client against a real local server (scripted answers)


@dataclass
class Seen:
    """One request as the server received it."""

    connection: int
    index: int  # its position on that connection, from 1
    head: dict[str, str]
    body: bytes
    reader: asyncio.StreamReader = field(repr=False, compare=False)


Respond = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]


class ScriptedStore:
    """A local HTTP/1.1 server: reads requests, answers with `respond` (False: close)."""

    def __init__(self, respond: Respond, ssl_context: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[Seen] = []
        self.handlers: set[asyncio.Task[None]] = set()
        self.clients: list[DynamoHttpClient] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> ScriptedStore:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        for client in self.clients:
            await client.close()
        self.server.close()
        await self.server.wait_closed()
        # the clients are closed by now: every handler ends at its connection's end
        await asyncio.wait_for(asyncio.gather(*self.handlers), 5)

    def client(self, **options: Any) -> DynamoHttpClient:
        """A client of this server, closed with it."""
        client = DynamoHttpClient(self.url, "us-east-1", "local", "local", **options)
        self.clients.append(client)
        return client

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections += 1
        number, index = self.connections, 0
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = raw.decode().split("\r\n")
                head = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        head[name.strip().lower()] = value.strip()
                head[":request-line"] = lines[0]
                body = await reader.readexactly(int(head.get("content-length", "0")))
                index += 1
                seen = Seen(number, index, head, body, reader)
                self.requests.append(seen)
                if not await self.respond(seen, writer):
                    return
        finally:
            writer.close()


def answer(
    status: int = 200,
    body: bytes = b'{"ok":true}',
    headers: str = "",
    reason: str = "OK",
) -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.0\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def test_request_on_the_wire_and_connection_reuse() -> None:
    """One keep-alive connection for sequential calls; the request is a signed POST /."""

    async def ok(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await send(writer, answer(body=b'{"Item":{"pk":{"S":"a"}}}'))
        return True

    async with ScriptedStore(ok) as store:
        lean = store.client()
        for _ in range(20):
            got = await lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
            assert got == {"Item": {"pk": {"S": "a"}}}
    assert store.connections == 1
    assert [seen.index for seen in store.requests] == list(range(1, 21))
    seen = store.requests[0]
    assert seen.head[":request-line"] == "POST / HTTP/1.1"
    assert seen.head["host"] == store.url.removeprefix("http://")
    assert seen.head["x-amz-target"] == "DynamoDB_20120810.GetItem"
    assert seen.head["content-type"] == "application/x-amz-json-1.0"
    assert orjson.loads(seen.body) == {"TableName": "t", "Key": {"pk": {"S": "a"}}}
    moment = dt.datetime.strptime(seen.head["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    expected = SigV4("local", "local", "us-east-1", "dynamodb").headers(
        seen.head["host"], "DynamoDB_20120810.GetItem", seen.body, moment
    )
    assert seen.head["authorization"] == expected["Authorization"]


async def test_server_closing_idle_connections() -> None:
    """A keep-alive connection the server closes after its answer (idle timeout, restart, or
    `Connection: close`) is not used again; calls go on over new connections, no retry."""

    async def once(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.connection % 2:
            await send(writer, answer())  # closed silently after the answer
        else:
            await send(writer, answer(headers="Connection: close\r\n"))
        return False

    async with ScriptedStore(once) as store:
        lean = store.client(max_attempts=1)
        for _ in range(6):
            assert await lean.list_tables() == {"ok": True}
            await asyncio.sleep(0.02)
    assert store.connections == 6
    assert len(store.requests) == 6


async def test_keep_alive_race_is_sent_again_at_once() -> None:
    """A reused connection closed without one byte of answer (the server's keep-alive timeout
    crossing our request) costs no attempt: the request goes again on a new connection."""

    async def one_per_connection(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.index > 1:
            return False  # the race: closes instead of answering the second request
        await send(writer, answer())
        return True

    async with ScriptedStore(one_per_connection) as store:
        lean = store.client(max_attempts=1)
        for _ in range(4):
            assert await lean.list_tables() == {"ok": True}
    assert store.connections == 4
    assert [(seen.connection, seen.index) for seen in store.requests] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
        (3, 1),
        (3, 2),
        (4, 1),
    ]


async def test_keep_alive_hint_bounds_idle_reuse() -> None:
    """`Keep-Alive: timeout=N` from the server: a connection idle longer is not reused."""

    async def hinted(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await send(writer, answer(headers="Keep-Alive: timeout=0.2\r\n"))
        return True

    async with ScriptedStore(hinted) as store:
        lean = store.client(max_attempts=1)
        await lean.list_tables()
        await lean.list_tables()  # at once: reused
        await asyncio.sleep(0.15)  # past half the hint
        await lean.list_tables()
    assert [(seen.connection, seen.index) for seen in store.requests] == [(1, 1), (1, 2), (2, 1)]


async def test_responses_split_across_reads() -> None:
    """Heads and bodies arriving a few bytes at a time, with Content-Length or chunked."""
    payload = orjson.dumps({"Items": [{"pk": {"S": "é" * 50}}], "Count": 1})
    plain = answer(body=payload)
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(
            b"%x;ext=1\r\n%s\r\n" % (len(part), part)
            for part in (payload[:7], payload[7:60], payload[60:])
        )
        + b"0\r\nX-Trailer: yes\r\n\r\n"
    )

    async def trickle(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        data = plain if seen.index % 2 else chunked
        step = 1 if seen.index <= 2 else 13
        for at in range(0, len(data), step):
            await send(writer, data[at : at + step])
            if at < 40 or step > 1:
                await asyncio.sleep(0.002)
        return True

    async with ScriptedStore(trickle) as store:
        lean = store.client(max_attempts=1)
        for _ in range(4):
            got = await lean.query(TableName="t")
            assert got == orjson.loads(payload)
    assert store.connections == 1


async def test_body_until_close_and_interim_response() -> None:
    """An HTTP/1.0-style answer without length ends at close; a 100 Continue is skipped."""

    async def old_style(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.index == 1 and seen.connection == 1:
            await send(writer, b"HTTP/1.1 100 Continue\r\n\r\n" + answer(body=b'{"a":1}'))
            return True
        await send(writer, b'HTTP/1.0 200 OK\r\n\r\n{"b":')
        await asyncio.sleep(0.01)
        await send(writer, b"2}")
        return False

    async with ScriptedStore(old_style) as store:
        lean = store.client(max_attempts=1)
        assert await lean.list_tables() == {"a": 1}
        assert await lean.list_tables() == {"b": 2}
        assert await lean.list_tables() == {"b": 2}
    assert [(seen.connection, seen.index) for seen in store.requests] == [(1, 1), (1, 2), (2, 1)]


async def test_error_body_maps_to_client_error_without_retry() -> None:
    """A 400 with a DynamoDB error body is botocore's ClientError (code, message, status)."""

    async def refuse(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        body = orjson.dumps(
            {
                "__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException",
                "message": "The conditional request failed",
            }
        )
        await send(writer, answer(400, body, reason="Bad Request"))
        return True

    async with ScriptedStore(refuse) as store:
        lean = store.client()
        with pytest.raises(ClientError) as refused:
            await lean.put_item(TableName="t", Item={"pk": {"S": "a"}})
    assert is_conditional_failure(refused.value)
    error = refused.value.response
    assert error["Error"] == {
        "Code": "ConditionalCheckFailedException",
        "Message": "The conditional request failed",
    }
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert refused.value.operation_name == "PutItem"
    assert len(store.requests) == 1


async def test_5xx_and_throttling_are_retried() -> None:
    """5xx and throttling answers are retried with backoff; the last one is the error."""
    plan: list[bytes] = [
        answer(500, b"oops", reason="Internal Server Error"),
        answer(400, b'{"__type":"x#ThrottlingException","message":"slow down"}'),
        answer(503, b'{"__type":"x#ServiceUnavailable","message":"later"}'),
        answer(body=b'{"done":1}'),
        answer(500, b"oops", reason="Internal Server Error"),
        answer(503, b"<html>busy</html>", reason="Service Unavailable"),
    ]

    async def scripted(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await send(writer, plan[len(store.requests) - 1])
        return True

    async with ScriptedStore(scripted) as store:
        lean = store.client(max_attempts=4)
        assert await lean.list_tables() == {"done": 1}
        assert len(store.requests) == 4
        lean.max_attempts = 2
        with pytest.raises(ClientError) as failed:
            await lean.list_tables()
    assert failed.value.response["Error"] == {"Code": "HTTP503", "Message": "<html>busy</html>"}
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert len(store.requests) == 6
    assert store.connections == 1


async def test_timeout_abandons_the_connection() -> None:
    """No answer within timeout_seconds: the attempt fails, its connection is not reused,
    and after max_attempts the call is a ConnectionError ClientError."""

    async def silent_first(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.connection <= 2:
            await seen.reader.read()  # never answers: until the client leaves
            return False
        await send(writer, answer())
        return True

    async with ScriptedStore(silent_first) as store:
        lean = store.client(timeout_seconds=0.2, max_attempts=2)
        started = time.monotonic()
        with pytest.raises(ClientError) as failed:
            await lean.list_tables()
        assert time.monotonic() - started < 1.5
        assert await lean.list_tables() == {"ok": True}
    assert failed.value.response["Error"]["Code"] == "ConnectionError"
    assert store.connections == 3


async def test_garbage_answer_is_a_connection_error() -> None:
    """Bytes that are not an HTTP response end the connection and count as a failed attempt."""

    async def garbage(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await send(writer, b"SSH-2.0-OpenSSH\r\n\r\n")
        return True

    async with ScriptedStore(garbage) as store:
        lean = store.client(max_attempts=2)
        with pytest.raises(ClientError) as failed:
            await lean.list_tables()
    assert failed.value.response["Error"]["Code"] == "ConnectionError"
    assert store.connections == 2


async def test_cancelled_call_drops_its_connection() -> None:
    """A caller cancelled mid-request: the connection (whose answer may still come) is closed,
    the next call uses a new one and gets its own answer."""

    async def slow_first(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.connection == 1:
            await asyncio.sleep(0.2)
        await send(writer, answer(body=b'{"n":%d}' % seen.connection))
        return True

    async with ScriptedStore(slow_first) as store:
        lean = store.client(max_attempts=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await lean.list_tables()
        assert await lean.list_tables() == {"n": 2}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    argv += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    argv += ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_endpoint(tls_files: tuple[Path, Path]) -> None:
    """An https endpoint is spoken to over TLS, its certificate verified."""
    cert, key = tls_files
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)

    async def ok(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await send(writer, answer(body=b'{"tls":true}'))
        return True

    async with ScriptedStore(ok, server_side) as store:
        trusting = store.client(ssl_context=ssl.create_default_context(cafile=cert))
        untrusting = store.client(max_attempts=1)
        assert await trusting.list_tables() == {"tls": True}
        assert await trusting.list_tables() == {"tls": True}
        with pytest.raises(ClientError) as refused:
            await untrusting.list_tables()
    assert refused.value.response["Error"]["Code"] == "ConnectionError"
    assert "CERTIFICATE_VERIFY_FAILED" in refused.value.response["Error"]["Message"]
    assert store.connections == 1  # the refused handshake never reached the handler


# -- lanes: single-item calls pipelined on a few connections


def item_id(seen: Seen) -> int:
    """The `n` a test put in a GetItem's key."""
    return int(orjson.loads(seen.body)["Key"]["n"]["N"])


def echo(n: int) -> bytes:
    return answer(body=b'{"Item":{"n":{"N":"%d"}}}' % n)


async def get_n(client: DynamoHttpClient, n: int) -> int:
    got = await client.get_item(TableName="t", Key={"n": {"N": str(n)}})
    return int(got["Item"]["n"]["N"])


async def test_calls_made_together_go_out_together() -> None:
    """A single-item call goes out on a free lane at the end of its loop iteration, in one
    write with the calls made in the same iteration, and each caller gets its own answer
    (answers come in request order)."""

    async def echoing(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await send(writer, echo(item_id(seen)))
        return True

    async with ScriptedStore(echoing) as store:
        lean = store.client(max_attempts=1)
        assert lean.lanes == 2
        assert await get_n(lean, 0) == 0  # opens lane 1
        got = await asyncio.gather(*(get_n(lean, n) for n in range(1, 21)))
        assert got == list(range(1, 21))
        # calls 1..20 were made in one loop iteration: one write on the free lane 1
        assert (lean.lane_writes, lean.lane_requests) == (2, 21)
    assert [(seen.connection, seen.index) for seen in store.requests] == [
        (1, n) for n in range(1, 22)
    ]
    assert [item_id(seen) for seen in store.requests] == list(range(21))


async def test_calls_arriving_while_lanes_are_busy_wait_and_go_together() -> None:
    """Calls made while every lane has a call in flight wait for the first lane to free and
    are written together on it."""
    release = asyncio.Event()

    async def slow_first(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if item_id(seen) in (1, 2):
            await release.wait()
        await send(writer, echo(item_id(seen)))
        return True

    async with ScriptedStore(slow_first) as store:
        lean = store.client(max_attempts=1)
        assert await get_n(lean, 0) == 0  # opens lane 1
        first = asyncio.create_task(get_n(lean, 1))  # lane 1 busy
        await asyncio.sleep(0)
        second = asyncio.create_task(get_n(lean, 2))  # lane 2 opens for it
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(store.requests) == 3:
                break
        rest = [asyncio.create_task(get_n(lean, n)) for n in range(3, 13)]
        await asyncio.sleep(0.1)
        assert len(store.requests) == 3  # nothing free: the ten wait
        release.set()
        assert await asyncio.gather(first, second, *rest) == list(range(1, 13))
        assert (lean.lane_writes, lean.lane_requests) == (4, 13)
    assert len({seen.connection for seen in store.requests[3:]}) == 1


async def test_answers_in_one_read_with_any_framing() -> None:
    """Several answers arriving in one write, chunked and with Content-Length mixed, split at
    odd places: each is cut at its own end and reaches its caller."""

    def chunked(n: int) -> bytes:
        body = b'{"Item":{"n":{"N":"%d"}}}' % n
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n%x\r\n%s\r\n" % (5, body[:5], len(body) - 5, body[5:])
            + (b"0\r\nX-Trailer: 1\r\n\r\n" if n % 2 else b"0\r\n\r\n")
        )

    held: dict[int, list[int]] = {}

    async def three_at_once(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if item_id(seen) >= 100:  # the call that keeps the lane busy while the others wait
            await asyncio.sleep(0.05)
            await send(writer, echo(item_id(seen)))
            return True
        ids = held.setdefault(seen.connection, [])
        ids.append(item_id(seen))
        if len(ids) == 3:
            data = b"".join(chunked(n) if n % 3 else echo(n) for n in ids)
            ids.clear()
            for at in range(0, len(data), 37):  # in pieces that cut heads, sizes and bodies
                await send(writer, data[at : at + 37])
        return True

    async with ScriptedStore(three_at_once) as store:
        lean = store.client(max_attempts=1, lanes=1)
        for first in (1, 4):
            ids = [100 + first, first, first + 1, first + 2]
            assert await asyncio.gather(*(get_n(lean, n) for n in ids)) == ids
    assert store.connections == 1


async def test_a_caller_that_gives_up_leaves_the_lane_working() -> None:
    """A caller cancelled while its request is pipelined: its answer is dropped when it comes,
    the calls behind it get theirs, and the lane stays in use."""

    async def slow_two(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if item_id(seen) == 2:
            await asyncio.sleep(0.2)
        await send(writer, echo(item_id(seen)))
        return True

    async with ScriptedStore(slow_two) as store:
        lean = store.client(max_attempts=1, lanes=1)
        assert await get_n(lean, 0) == 0

        async def impatient() -> None:
            async with asyncio.timeout(0.05):
                await get_n(lean, 2)

        results = await asyncio.gather(
            get_n(lean, 1), impatient(), get_n(lean, 3), return_exceptions=True
        )
        assert results[0] == 1
        assert isinstance(results[1], TimeoutError)
        assert results[2] == 3
        assert await get_n(lean, 4) == 4
    assert store.connections == 1
    assert [item_id(seen) for seen in store.requests] == [0, 1, 2, 3, 4]


async def test_lane_closed_mid_batch_sends_the_unanswered_again() -> None:
    """The server answers part of a pipelined batch and closes: the requests without a byte of
    answer are sent again at once on a new lane (no attempt used up); answered ones are not."""

    async def closes_mid_batch(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.connection == 1 and seen.index == 5:
            return False  # closes with requests 5.. of the batch unanswered
        await send(writer, echo(item_id(seen)))
        return True

    async with ScriptedStore(closes_mid_batch) as store:
        lean = store.client(max_attempts=1, lanes=1)
        assert await get_n(lean, 0) == 0
        # call 1 at once on the lane; calls 2..8 wait and then go together on it
        got = await asyncio.gather(*(get_n(lean, n) for n in range(1, 9)))
        assert got == list(range(1, 9))
    assert [(seen.connection, item_id(seen)) for seen in store.requests] == [
        (1, 0),
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),  # read, never answered: sent again
        *((2, n) for n in range(4, 9)),
    ]


async def test_unanswered_lane_times_out_and_the_call_is_retried() -> None:
    """A lane whose answers do not come within timeout_seconds fails every call on it; `call`
    retries them on a new lane."""

    async def silent_first(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.connection == 1:
            await seen.reader.read()  # never answers: until the client leaves
            return False
        await send(writer, echo(item_id(seen)))
        return True

    async with ScriptedStore(silent_first) as store:
        lean = store.client(timeout_seconds=0.2, max_attempts=2, lanes=1)
        started = time.monotonic()
        got = await asyncio.gather(*(get_n(lean, n) for n in range(5)))
        assert got == list(range(5))
        assert time.monotonic() - started < 3
    assert store.connections >= 2


async def test_queries_do_not_wait_behind_lanes() -> None:
    """Queries and batches use the pool: a slow single-item call on a lane does not hold them."""
    release = asyncio.Event()

    async def slow_put(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.head["x-amz-target"].endswith("PutItem"):
            await release.wait()
        await send(writer, answer())
        return True

    async with ScriptedStore(slow_put) as store:
        lean = store.client(max_attempts=1)
        put = asyncio.create_task(lean.put_item(TableName="t", Item={"pk": {"S": "a"}}))
        await asyncio.sleep(0.05)
        assert await lean.query(TableName="t") == {"ok": True}
        assert not put.done()
        release.set()
        assert await put == {"ok": True}
    assert store.connections == 2


async def test_lanes_off_and_defaults() -> None:
    """lanes=0 sends every call on its own pooled connection; an https endpoint has no lanes
    unless asked; CHAT_DYNAMO_LANES reaches the services' client."""
    assert DynamoHttpClient("https://store.example:443", "eu-west-1", "a", "b").lanes == 0
    assert DynamoHttpClient("https://store.example:443", "eu-west-1", "a", "b", lanes=3).lanes == 3
    with pytest.raises(ValueError, match="lanes"):
        DynamoHttpClient("http://127.0.0.1:1", "eu-west-1", "a", "b", lanes=-1)
    async with open_dynamo(CommonSettings(dynamo_url="http://127.0.0.1:1", dynamo_lanes=4)) as c:
        assert isinstance(c, DynamoHttpClient)
        assert c.lanes == 4
    async with open_dynamo(CommonSettings(dynamo_url="http://127.0.0.1:1")) as c:
        assert isinstance(c, DynamoHttpClient)
        assert c.lanes == 2

    async def echoing(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        await send(writer, echo(item_id(seen)))
        return True

    async with ScriptedStore(echoing) as store:
        lean = store.client(max_attempts=1, lanes=0)
        got = await asyncio.gather(*(get_n(lean, n) for n in range(8)))
        assert got == list(range(8))
        assert lean.lane_writes == 0
    assert store.connections == 8
    assert all(seen.index == 1 for seen in store.requests)


async def test_conditional_puts_through_lanes_on_the_real_store(infra: Infra) -> None:
    """Against dynalite: many concurrent conditional puts on few keys, pipelined on two lanes,
    keep exactly one winner per key, and the batches really formed."""
    lean = DynamoHttpClient(infra.dynamo_url, "us-east-1", "local", "local", lanes=2)
    table = f"{infra.table_prefix}messages"
    wins: list[int] = []

    refused: list[ClientError] = []

    async def put(n: int) -> None:
        try:
            await lean.put_item(
                TableName=table,
                Item={"pk": {"S": "room_lanes"}, "sk": {"N": str(n % 10)}, "by": {"N": str(n)}},
                **if_absent("pk"),
            )
            wins.append(n)
        except ClientError as exc:
            refused.append(exc)

    try:
        await asyncio.gather(*(put(n) for n in range(200)))
        assert lean.lane_requests == 200
        assert lean.lane_writes < 100
        assert sorted(n % 10 for n in wins) == list(range(10))
        assert len(refused) == 190
        assert all(is_conditional_failure(exc) for exc in refused)
        for n in wins:
            got = await lean.get_item(
                TableName=table, Key={"pk": {"S": "room_lanes"}, "sk": {"N": str(n % 10)}}
            )
            assert got["Item"]["by"] == {"N": str(n)}
    finally:
        await lean.close()
