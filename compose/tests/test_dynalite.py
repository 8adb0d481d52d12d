"""The embedded store's launcher (compose/dynalite/start.js): its LevelDB settings take effect."""

from __future__ import annotations

import asyncio
import os
import subprocess
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


async def fill(url: str, megabytes: int) -> None:
    """About `megabytes` MB of items in a fresh table (batch writes: quick)."""
    from infra.settings import CommonSettings
    from infra.store import open_dynamo, open_dynamo_admin

    settings = CommonSettings(dynamo_url=url, table_prefix="t_")
    async with open_dynamo_admin(settings) as admin:
        await admin.create_table(
            TableName="t_fill",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for _ in range(100):
            table = (await admin.describe_table(TableName="t_fill"))["Table"]
            if table["TableStatus"] == "ACTIVE":
                break
            await asyncio.sleep(0.05)
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
