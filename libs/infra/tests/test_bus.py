"""connect_nats / close_nats against a real NATS: what a stop and a lost server log."""

from __future__ import annotations

import asyncio
import logging

import pytest

from infra.bus import close_nats, connect_nats
from infra.settings import CommonSettings
from mesh.testing import Infra, eventually

pytestmark = pytest.mark.integration


async def test_our_close_is_info_and_a_lost_server_a_warning(
    infra: Infra, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing our own connection (every service's shutdown) is not logged as a fault; the
    server going away is."""
    caplog.set_level(logging.INFO, logger="infra.bus")
    with await asyncio.to_thread(infra.fork) as fork:  # a NATS this test may stop
        settings = CommonSettings(nats_urls=fork.nats_url)
        closed = await connect_nats(settings, "test-close")
        await close_nats(closed)
        lost = await connect_nats(settings, "test-lost")
        try:
            assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
            assert {r.levelname for r in caplog.records if "closed" in r.getMessage()} == {"INFO"}
            await asyncio.to_thread(fork.procs["nats"].stop)
            await eventually(lambda: "nats disconnected" in caplog.text, within=10)
            assert [r.levelname for r in caplog.records if "disconnected" in r.getMessage()] == [
                "WARNING"
            ]
        finally:
            await lost.close()
