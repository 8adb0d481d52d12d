"""Provisioning against a real NATS: what a full stream does with what it holds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.js.api import DiscardPolicy
from nats.js.errors import APIError

from contracts import subjects
from infra.bus import close_nats, connect_nats
from infra.provision import STREAM_MAX_BYTES, ensure_streams
from infra.settings import CommonSettings
from mesh.testing import Infra

pytestmark = pytest.mark.integration


async def fill_commands(settings: CommonSettings) -> dict[str, Any]:
    """Shrink the command stream to 64 KB, publish 1 KB commands until one is refused."""
    nc = await connect_nats(settings, "test-provision")
    try:
        js = nc.jetstream(timeout=5)
        # a stream provisioned before discard was set (data folders of older versions)
        old = (await js.stream_info(subjects.COMMANDS_STREAM)).config
        old.discard = DiscardPolicy.OLD
        await js.update_stream(old)
        await ensure_streams(settings, max_bytes=64 * 1024)
        info = await js.stream_info(subjects.COMMANDS_STREAM)
        events = await js.stream_info(subjects.EVENTS_STREAM)
        accepted, refused = 0, None
        for i in range(200):
            try:
                await js.publish(subjects.create_message("room-1"), f"{i:04d}".encode() * 256)
                accepted += 1
            except APIError as exc:
                refused = exc
                break
        first = await js.get_msg(subjects.COMMANDS_STREAM, seq=1)
        after = await js.stream_info(subjects.COMMANDS_STREAM)
        await ensure_streams(settings)  # back to the default bound
        restored = await js.stream_info(subjects.COMMANDS_STREAM)
        return {
            "discard": info.config.discard,
            "events_discard": events.config.discard,
            "accepted": accepted,
            "refused": refused,
            "first": first.data[:4] if first.data else b"",
            "kept": after.state.messages,
            "restored_max_bytes": restored.config.max_bytes,
        }
    finally:
        await close_nats(nc)


def test_a_full_command_stream_refuses_new_commands_and_keeps_the_old(infra: Infra) -> None:
    """Commands wait in a work queue until history stored them: when the stream is full, a new
    publish is refused (the edge tells the client, which retries) and no waiting command is
    dropped to make room (also for a stream provisioned before this setting). The event log
    drops its oldest instead."""
    with infra.fork() as child:
        seen = asyncio.run(fill_commands(CommonSettings(nats_urls=child.nats_url)))
    assert seen["discard"] == DiscardPolicy.NEW
    assert seen["events_discard"] == DiscardPolicy.OLD
    assert seen["refused"] is not None, "a full command stream accepted every publish"
    assert 40 <= seen["accepted"] <= 64, seen["accepted"]  # ~1 KB each in 64 KB
    assert seen["first"] == b"0000"  # the oldest command is still there
    assert seen["kept"] == seen["accepted"]
    assert seen["restored_max_bytes"] == STREAM_MAX_BYTES
