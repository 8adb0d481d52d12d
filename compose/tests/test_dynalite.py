"""The embedded store's launcher (compose/dynalite/start.js): its LevelDB settings take effect."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mesh import servers

pytestmark = pytest.mark.integration


@contextmanager
def dynalite(data: Path, **env: str) -> Iterator[servers.Proc]:
    proc = servers.start_dynalite(servers.free_port(), data, data / "log", env)
    try:
        yield proc
    finally:
        proc.stop()


async def new_table(admin: Any, name: str, sort_key: str | None = None) -> None:
    """A table keyed by a string `pk` (and a number `sort_key`), once it is ACTIVE."""
    keys = [{"AttributeName": "pk", "KeyType": "HASH"}]
    types = [{"AttributeName": "pk", "AttributeType": "S"}]
    if sort_key is not None:
        keys.append({"AttributeName": sort_key, "KeyType": "RANGE"})
        types.append({"AttributeName": sort_key, "AttributeType": "N"})
    await admin.create_table(
        TableName=name, KeySchema=keys, AttributeDefinitions=types, BillingMode="PAY_PER_REQUEST"
    )
    for _ in range(100):
        table = (await admin.describe_table(TableName=name))["Table"]
        if table["TableStatus"] == "ACTIVE":
            return
        await asyncio.sleep(0.05)


async def fill(url: str, megabytes: int) -> None:
    """About `megabytes` MB of items in a fresh table (batch writes: quick)."""
    from infra.settings import CommonSettings
    from infra.store import open_dynamo, open_dynamo_admin

    settings = CommonSettings(dynamo_url=url, table_prefix="t_")
    async with open_dynamo_admin(settings) as admin:
        await new_table(admin, "t_fill")
    body = "x" * 4000
    async with open_dynamo(settings) as client:
        for batch in range(megabytes * 10):  # 25 items of 4 KB: 100 KB per batch
            items: list[Any] = [
                {"PutRequest": {"Item": {"pk": {"S": f"{batch}-{i}"}, "v": {"S": body}}}}
                for i in range(25)
            ]
            await client.batch_write_item(RequestItems={"t_fill": items})


def tables_on_disk(data: Path) -> list[Path]:
    """LevelDB's sorted tables: written when the write buffer is flushed."""
    return sorted(data.glob("*.ldb"))


def test_write_buffer_setting_reaches_leveldb(tmp_path: Path) -> None:
    """6 MB of writes stay in a 64 MB write buffer (the default) but are flushed to level-0
    tables through a 1 MB one."""
    big, small = tmp_path / "big", tmp_path / "small"
    for folder, env in ((big, {}), (small, {"CHAT_DYNALITE_WRITE_BUFFER_MB": "1"})):
        folder.mkdir()
        with dynalite(folder, **env) as proc:
            asyncio.run(fill(proc.url, 6))
    assert tables_on_disk(big) == []
    assert tables_on_disk(small)  # flushed (and maybe compacted into one)


def test_one_libuv_thread_by_default(tmp_path: Path) -> None:
    """CHAT_DYNALITE_THREADS (1 unless set) sizes the pool LevelDB's work runs on."""
    counts = {}
    for threads in ("1", "4"):
        folder = tmp_path / threads
        folder.mkdir()
        env = {} if threads == "1" else {"CHAT_DYNALITE_THREADS": threads}
        with dynalite(folder, **env) as proc:
            asyncio.run(fill(proc.url, 1))  # the pool starts with the first LevelDB call
            counts[threads] = len(list(Path(f"/proc/{proc.pid}/task").iterdir()))
    assert counts["4"] - counts["1"] == 3, counts


def test_a_bad_write_buffer_setting_is_refused(tmp_path: Path) -> None:
    """Not a number of MB in range: the store does not start, and says why."""
    argv = servers.dynalite_command(servers.free_port(), tmp_path)
    env = {"CHAT_DYNALITE_WRITE_BUFFER_MB": "lots"}
    result = subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "CHAT_DYNALITE_WRITE_BUFFER_MB" in result.stderr


async def race_conditional_puts(url: str, keys: int, writers: int) -> dict[str, Any]:
    """`writers` concurrent conditional puts per key, then a consistent read of each key, then
    a put and an immediate read; returns what each step saw and every request id."""
    from infra.settings import CommonSettings
    from infra.store import if_absent, is_conditional_failure, open_dynamo_admin

    settings = CommonSettings(dynamo_url=url, table_prefix="t_")
    # botocore's client: it returns each answer's request id (the services' client does not)
    async with open_dynamo_admin(settings) as client:
        await new_table(client, "t_race")
        request_ids: list[str] = []
        winners: dict[str, list[str]] = {f"k{k}": [] for k in range(keys)}

        async def put(key: str, writer: str) -> None:
            try:
                answer = await client.put_item(
                    TableName="t_race",
                    Item={"pk": {"S": key}, "w": {"S": writer}},
                    **if_absent("pk"),
                )
            except Exception as exc:
                if not is_conditional_failure(exc):
                    raise
                answer = exc.response  # type: ignore[attr-defined]  # botocore's ClientError
                request_ids.append(answer["ResponseMetadata"]["RequestId"])
                return
            request_ids.append(answer["ResponseMetadata"]["RequestId"])
            winners[key].append(writer)

        await asyncio.gather(*(put(k, f"w{w}") for k in winners for w in range(writers)))
        stored = {}
        for key in winners:
            got = await client.get_item(
                TableName="t_race", Key={"pk": {"S": key}}, ConsistentRead=True
            )
            stored[key] = got["Item"]["w"]["S"]
        read_after_write = []
        for i in range(50):
            await client.put_item(TableName="t_race", Item={"pk": {"S": f"x{i}"}})
            got = await client.get_item(
                TableName="t_race", Key={"pk": {"S": f"x{i}"}}, ConsistentRead=True
            )
            read_after_write.append("Item" in got)
    return {
        "winners": winners,
        "stored": stored,
        "read_after_write": read_after_write,
        "request_ids": request_ids,
    }


def test_reads_on_the_event_loop_keep_conditional_puts_exact(tmp_path: Path) -> None:
    """With reads served on the event loop (the default), a conditional put still sees every
    write acknowledged before it: one winner per key among concurrent writers, the stored item
    is the winner's, a put is read back at once; request ids (from the launcher's pool of
    random bytes) are all distinct and in dynalite's format."""
    with dynalite(tmp_path) as proc:
        seen = asyncio.run(race_conditional_puts(proc.url, keys=40, writers=8))
        log = proc.log_path.read_text()
    assert "reads on the event loop" in log
    for key, won in seen["winners"].items():
        assert len(won) == 1, (key, won)
        assert seen["stored"][key] == won[0]
    assert all(seen["read_after_write"])
    ids = seen["request_ids"]
    assert len(ids) == 40 * 8
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 52 and i.isalnum() and i.upper() == i for i in ids)


def test_reads_can_stay_on_the_thread_pool(tmp_path: Path) -> None:
    """CHAT_DYNALITE_SYNC_READS=0 keeps LevelDB's asynchronous gets (same results)."""
    with dynalite(tmp_path, CHAT_DYNALITE_SYNC_READS="0") as proc:
        seen = asyncio.run(race_conditional_puts(proc.url, keys=10, writers=4))
        log = proc.log_path.read_text()
    assert "reads on the thread pool" in log
    assert all(len(won) == 1 for won in seen["winners"].values())
    assert all(seen["read_after_write"])


PROBE = Path(__file__).with_name("open_iterators.js")


async def query_rooms(url: str, rooms: int, queries: int) -> None:
    """`rooms` partitions of 3 rows, then `queries` one-row queries (dynalite stops reading
    each query's iterator after the first row) and a few full ones."""
    from infra.settings import CommonSettings
    from infra.store import open_dynamo_admin

    settings = CommonSettings(dynamo_url=url, table_prefix="t_")
    async with open_dynamo_admin(settings) as client:
        await new_table(client, "t_rows", sort_key="sk")
        for r in range(rooms):
            for sk in (1, 2, 3):
                item = {"pk": {"S": f"r{r}"}, "sk": {"N": str(sk)}}
                await client.put_item(TableName="t_rows", Item=item)

        async def query(n: int, limit: int | None) -> None:
            await client.query(
                TableName="t_rows",
                KeyConditionExpression="pk = :p",
                ExpressionAttributeValues={":p": {"S": f"r{n % rooms}"}},
                ConsistentRead=True,
                **({"Limit": limit} if limit else {}),
            )

        for start in range(0, queries, 50):
            await asyncio.gather(*(query(n, 1) for n in range(start, start + 50)))
        await asyncio.gather(*(query(n, None) for n in range(20)))


def test_query_iterators_are_closed(tmp_path: Path) -> None:
    """Every LevelDB iterator a Query opens is closed when dynalite is done with it (the
    launcher gives abstract-level's iterators the `return` dynalite calls): after 500 queries
    none is left open. Without it, each stayed open for good (about 4.5 KB of the store's
    memory per query, and a LevelDB snapshot pinned)."""
    with dynalite(tmp_path, NODE_OPTIONS=f"--require {PROBE}") as proc:
        asyncio.run(query_rooms(proc.url, rooms=5, queries=500))
        still_open, opened = -1, 0
        for _ in range(50):  # the probe prints every 200 ms; iterators close asynchronously
            lines = [
                line
                for line in proc.log_path.read_text().splitlines()
                if line.startswith("OPEN_ITERATORS ")
            ]
            if lines:
                still_open, opened = (int(n) for n in lines[-1].split()[1:3])
                if still_open == 0 and opened >= 500:
                    break
            time.sleep(0.2)
    assert opened >= 500, f"the probe saw {opened} iterators opened"
    assert still_open == 0, f"{still_open} of {opened} iterators left open"
