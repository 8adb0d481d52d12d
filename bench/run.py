"""`make bench`: the same load at this project's mesh, python-socketio and Node socket.io.

For each run and stack: start the stack on free loopback ports, run the scenarios (idle,
latency, fan-out ladder, linear cost, history, ingest, hops), stop it by pid. Writes
`bench/results/`: `results.jsonl` (every figure of every run, then the medians), `table.md`,
`*.png` and, with `--profile`, py-spy flame graphs of every Python service during fan-out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from infra.settings import CommonSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
from stacks import STACKS, MeshStack, Stack

BENCH = Path(__file__).resolve().parent
LOADGEN = BENCH / "loadgen" / "loadgen.js"
SCENARIOS = ("idle", "latency", "fanout", "linear", "history", "ingest", "hops")
MESH_ONLY = {"history", "ingest", "hops"}

Record = dict[str, Any]


@dataclass
class Config:
    stacks: list[str]
    scenarios: list[str]
    runs: int = 3
    out: Path = BENCH / "results"
    profile: bool = False
    profile_format: str = "flamegraph"
    store_in_memory: bool = False
    quick: bool = False
    loadgens: int = 1
    pause: float = 1.0  # seconds of quiet after connecting, x3 before measuring idle RSS
    settle_limit: float = 30.0  # at most this long waiting for the stack to go idle
    # fan-out
    clients: int = 1000
    room_size: int = 10
    rates: list[int] = field(default_factory=lambda: [250, 500, 1000, 1500, 2000, 3000, 4000, 6000])
    step_seconds: float = 20.0
    drain_seconds: float = 2.0
    warmup_seconds: float = 3.0
    max_loss: int = 0
    max_p99_ms: float = 100.0
    # linear cost: fan-out at a fixed per-client rate, base population, then doubled
    linear_clients: int = 500
    linear_room_size: int = 10  # even: the rooms-doubled shape uses rooms of half this size
    linear_rate: float = 0.25  # msg/s per client: the mesh passes 250 msg/s with margin
    # latency
    latency_clients: int = 100
    latency_rate: float = 100.0
    latency_seconds: float = 20.0
    # idle
    idle_connections: int = 20000
    # then held this long, quiet, for the servers' CPU while holding them (heartbeats, sweeps)
    idle_hold_seconds: float = 10.0
    # history
    history_clients: int = 1000
    history_room_size: int = 10
    history_seed_rate: float = 500.0
    history_seed_seconds: float = 20.0
    history_readers: int = 32
    history_seconds: float = 20.0
    history_missed: int = 50
    # ingest
    ingest_clients: int = 200
    # above what the mesh stores here (about 3,200/s at e29f73d), so the stored count is the
    # mesh's and not the offer's; not far above: at 6,000 the per-connection queues fill, the
    # edges refuse the frames beyond them, and the stored count varies (2,232-3,169)
    ingest_rate: float = 4000.0
    ingest_seconds: float = 20.0
    ingest_concurrency: int = 64
    # hops: round trips measured per hop and mode (the WebSocket hops at most HOP_SAMPLES_MAX)
    hop_samples: int = 150


# ---- processes and figures -----------------------------------------------------------------


class Sampler:
    """CPU seconds and peak RSS of a set of processes over a window (psutil, 4 samples/s)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs: dict[str, psutil.Process] = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                self.procs[name] = psutil.Process(pid)
        self.peak: dict[str, int] = dict.fromkeys(self.procs, 0)
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self._machine0: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _cpu(self, p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def _rss(self) -> None:
        for name, p in self.procs.items():
            with contextlib.suppress(psutil.Error):
                self.peak[name] = max(self.peak[name], p.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self._rss()

    def start(self) -> Sampler:
        self._machine0 = psutil.cpu_times()
        self._t0 = time.monotonic()
        self._cpu0 = {n: self._cpu(p) for n, p in self.procs.items()}
        self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._rss()
        wall = time.monotonic() - self._t0
        cpu = {n: self._cpu(p) - self._cpu0[n] for n, p in self.procs.items()}
        m0, m1 = self._machine0, psutil.cpu_times()
        busy = sum(m1) - sum(m0) - (m1.idle - m0.idle) - (m1.iowait - m0.iowait)
        return {
            "wall_s": wall,
            # every core of the machine, in % of one core (other users' load shows here)
            "machine_cpu_pct": 100 * busy / wall,
            "cpu_s": cpu,
            "cpu_pct": {n: 100 * c / wall for n, c in cpu.items()},
            "peak_rss_mb": {n: v / 2**20 for n, v in self.peak.items()},
        }


def rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


class LoadGen:
    """One Node load-generator process, driven by JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> LoadGen:
        node = shutil.which("node") or "node"
        proc = await asyncio.create_subprocess_exec(
            node,
            "--max-old-space-size=4096",
            str(LOADGEN),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(LOADGEN.parent),
            limit=2**26,
            start_new_session=True,
        )
        lg = cls(proc)
        LIVE_LOADGENS.add(proc.pid)
        hello = await lg._read()
        assert hello.get("cmd") == "ready", hello
        return lg

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError("load generator exited")
        result: dict[str, Any] = json.loads(line)
        return result

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        answer = await self._read()
        if not answer.get("ok"):
            raise RuntimeError(f"load generator {cmd}: {answer.get('error')}")
        return answer

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        LIVE_LOADGENS.discard(self.proc.pid)


async def start_loadgens(n: int) -> list[LoadGen]:
    return list(await asyncio.gather(*(LoadGen.start() for _ in range(n))))


async def stop_loadgens(lgs: list[LoadGen]) -> None:
    await asyncio.gather(*(lg.stop() for lg in lgs))


def percentiles(hist: dict[int, int], bucket_ms: float) -> dict[str, float | None]:
    total = sum(hist.values())
    out: dict[str, float | None] = {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    if total == 0:
        return out
    marks = [("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99)]
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        for key, q in marks:
            if out[key] is None and seen >= math.ceil(q * total):
                out[key] = (b + 1) * bucket_ms
    return out


def merge_hist(parts: list[dict[str, Any]]) -> dict[int, int]:
    hist: dict[int, int] = {}
    for p in parts:
        for b, n in p["hist"].items():
            hist[int(b)] = hist.get(int(b), 0) + int(n)
    return hist


# ---- clients -------------------------------------------------------------------------------


@dataclass
class Population:
    """Clients (load-generator specs) spread over rooms and edge nodes."""

    specs: list[dict[str, Any]]
    members: dict[str, int]  # room -> member count
    tokens: dict[str, str]  # room -> a member's token (history reads)


async def population(
    stack: Stack, clients: int, room_size: int, tag: str, send: bool = True
) -> Population:
    """`clients` clients in rooms of `room_size`; member j of a room connects to node j % 2."""
    rooms = max(1, clients // room_size)
    specs: list[dict[str, Any]] = []
    tokens: dict[str, str] = {}
    if isinstance(stack, MeshStack):
        users = await stack.create_users(rooms * room_size, tag)
        groups = [users[i * room_size : (i + 1) * room_size] for i in range(rooms)]
        room_ids = await stack.create_rooms(groups)
        for r, (room, group) in enumerate(zip(room_ids, groups, strict=True)):
            tokens[room] = group[0]["token"]
            for j, u in enumerate(group):
                url = stack.edge_urls[j % 2] + u["token"]
                specs.append(
                    {
                        "idx": r * room_size + j,
                        "url": url,
                        "proto": "mesh",
                        "room": room,
                        "user": u["id"],
                        "send": send,
                    }
                )
    else:
        for r in range(rooms):
            room = f"{tag}-{r}"
            for j in range(room_size):
                specs.append(
                    {
                        "idx": r * room_size + j,
                        "url": stack.edge_urls[j % 2],
                        "proto": "sio",
                        "room": room,
                        "user": f"u{r}-{j}",
                        "send": send,
                    }
                )
    members: dict[str, int] = {}
    for s in specs:
        members[s["room"]] = members.get(s["room"], 0) + 1
    return Population(specs, members, tokens)


async def connect_all(lgs: list[LoadGen], specs: list[dict[str, Any]]) -> dict[str, Any]:
    shares = [specs[i :: len(lgs)] for i in range(len(lgs))]
    t0 = time.monotonic()
    parts = await asyncio.gather(
        *(
            lg.call("connect", clients=s, concurrency=250, timeoutMs=60000)
            for lg, s in zip(lgs, shares, strict=True)
        )
    )
    connected = sum(p["connected"] for p in parts)
    failed = sum(p["failed"] for p in parts)
    why: dict[str, int] = {}
    for p in parts:
        for k, v in p["why"].items():
            why[k] = why.get(k, 0) + v
    return {"connected": connected, "failed": failed, "why": why, "seconds": time.monotonic() - t0}


async def drive_step(
    cfg: Config,
    stack: Stack,
    lgs: list[LoadGen],
    pop: Population,
    step: int,
    rate: float,
    seconds: float,
    during: Callable[[], Awaitable[None]] | None = None,
) -> Record:
    """One offered rate for `seconds`: every figure of the step."""
    sampler = Sampler(stack.pids).start()
    lg_sampler = Sampler({f"loadgen-{i}": lg.pid for i, lg in enumerate(lgs)}).start()
    calls = [
        lg.call("step", step=step, rate=rate / len(lgs), duration=seconds, drain=cfg.drain_seconds)
        for lg in lgs
    ]
    extra = [during()] if during is not None else []
    results = await asyncio.gather(*calls, *extra)
    parts: list[dict[str, Any]] = list(results[: len(lgs)])
    procs = sampler.stop()
    lg_procs = lg_sampler.stop()
    sent_by_room: dict[str, int] = {}
    recv = 0
    for p in parts:
        for room, n in p["sentByRoom"].items():
            sent_by_room[room] = sent_by_room.get(room, 0) + n
        recv += sum(p["recvByRoom"].values())
    expected = sum(n * pop.members[room] for room, n in sent_by_room.items())
    send_s = max(p["sendSeconds"] for p in parts)
    server_cpu = sum(procs["cpu_s"].values())
    rec: Record = {
        "offered_rate": rate,
        "seconds": seconds,
        "sent": sum(p["sent"] for p in parts),
        "sent_rate": sum(p["sent"] for p in parts) / send_s,
        "expected_frames": expected,
        "delivered_frames": recv,
        "delivered_fps": recv / send_s,
        "lost": expected - recv,
        "duplicated": sum(p["dup"] for p in parts),
        "out_of_order": sum(p["ooo"] for p in parts),
        "late_frames": sum(p["late"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        **percentiles(merge_hist(parts), parts[0]["bucketMs"]),
        "max_ms": max(p["maxMs"] for p in parts),
        "cpu_pct": procs["cpu_pct"],
        "peak_rss_mb": procs["peak_rss_mb"],
        "server_cpu_s": server_cpu,
        "server_cpu_pct": 100 * server_cpu / procs["wall_s"],
        "machine_cpu_pct": procs["machine_cpu_pct"],
        "other_cpu_pct": procs["machine_cpu_pct"]
        - 100 * server_cpu / procs["wall_s"]
        - sum(lg_procs["cpu_pct"].values()),
        "server_cpu_us_per_frame": (1e6 * server_cpu / recv) if recv else None,
        "loadgen_cpu_pct": sum(lg_procs["cpu_pct"].values()),
        "loadgen_elu": max(p["elu"] for p in parts),
        "open_connections": sum(p["open"] for p in parts),
    }
    rec["load_bound"] = rec["loadgen_elu"] > 0.8
    p99 = rec["p99_ms"]
    rec["pass"] = (
        rec["lost"] <= cfg.max_loss
        and rec["duplicated"] == 0
        and p99 is not None
        and p99 < cfg.max_p99_ms
    )
    return rec


async def settle(stack: Stack, limit_s: float = 60.0) -> None:
    """Wait until the stack's processes are nearly idle (a backlog of the last step is done)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        s = Sampler(stack.pids).start()
        await asyncio.sleep(1.0)
        if sum(s.stop()["cpu_pct"].values()) < 15:
            return


# ---- scenarios -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fanout_clients(
    cfg: Config, stack: Stack, clients: int, room_size: int, tag: str
) -> AsyncIterator[tuple[Population, list[LoadGen]]]:
    """Fan-out-shaped clients connected and warmed up (`cfg.loadgens` processes), then closed.

    The setup every fan-out measurement shares: `clients` clients in rooms of `room_size`
    (members alternating over the two nodes), every one sending, connected, then an unrecorded
    warm-up of about one message per room per second and a wait until the stack is idle.
    """
    pop = await population(stack, clients, room_size, tag)
    lgs = await start_loadgens(cfg.loadgens)
    try:
        conn = await connect_all(lgs, pop.specs)
        if conn["failed"]:
            raise RuntimeError(f"{tag}: {conn['failed']} clients failed to connect: {conn['why']}")
        await asyncio.sleep(cfg.pause)
        # warm-up, not recorded: about one message per room (caches, read models, JIT)
        await drive_step(cfg, stack, lgs, pop, 999, len(pop.members), cfg.warmup_seconds)
        await settle(stack, min(10, cfg.settle_limit))
        yield pop, lgs
    finally:
        await stop_loadgens(lgs)


def step_summary(rec: Record) -> str:
    """The log line's figures of a fan-out step."""
    return (
        f"{rec['delivered_fps']:.0f} frames/s, lost {rec['lost']}, dup {rec['duplicated']}, "
        f"p99 {fmt(rec['p99_ms'])} ms, server CPU {rec['server_cpu_pct']:.0f}% "
        f"({rec['server_cpu_s']:.1f} s), others {rec['other_cpu_pct']:.0f}%, "
        f"loadgen ELU {rec['loadgen_elu']:.2f}"
    )


async def count_stragglers(lgs: list[Any], rec: Record, name: str) -> None:
    """A step that lost frames: keep listening (until 5 s pass without a frame, 60 s at most)
    and record how many of them arrived late and how many never did. Why: "lost" counts what
    did not arrive within the step and its drain, which for a stack that queues under overload
    is delay, not loss."""
    tails = await asyncio.gather(*(lg.call("tail", quiet=5.0, max=60.0) for lg in lgs))
    arrived = sum(t["arrived"] for t in tails)
    rec["arrived_after_drain"] = arrived
    rec["never_delivered"] = rec["lost"] - arrived
    rec["duplicated_after_drain"] = sum(t["dup"] for t in tails)
    log(
        f"  {name}: of the {rec['lost']} frames not delivered within the step, {arrived} "
        f"arrived in the next {max(t['seconds'] for t in tails):.0f} s, "
        f"{rec['never_delivered']} never (dup {rec['duplicated_after_drain']})"
    )


async def scenario_fanout(cfg: Config, stack: Stack, out: Path) -> list[Record]:
    profilers: list[tuple[str, subprocess.Popen[bytes]]] = []
    records: list[Record] = []
    async with fanout_clients(cfg, stack, cfg.clients, cfg.room_size, "fan") as (pop, lgs):
        try:
            if cfg.profile:
                profilers = start_profilers(stack, out, cfg.profile_format)
            for i, rate in enumerate(cfg.rates):
                rec = await drive_step(cfg, stack, lgs, pop, i, rate, cfg.step_seconds)
                rec.update(clients=cfg.clients, room_size=cfg.room_size)
                records.append(rec)
                log(
                    f"  {stack.name} fan-out {rate:>6} msg/s: {step_summary(rec)}"
                    + ("" if rec["pass"] else "  -> failed, leaving the ladder")
                )
                if not rec["pass"]:
                    if rec["lost"] > 0:
                        await count_stragglers(lgs, rec, stack.name)
                    break
                await settle(stack, min(10, cfg.settle_limit))
            # a stack failing the first step: halve the rate until a step passes, so it has a best
            low = cfg.rates[0] / 2
            while records and not any(r["pass"] for r in records) and low >= cfg.rates[0] / 16:
                await settle(stack, min(30, cfg.settle_limit))
                rec = await drive_step(cfg, stack, lgs, pop, len(records), low, cfg.step_seconds)
                rec.update(clients=cfg.clients, room_size=cfg.room_size)
                records.append(rec)
                log(
                    f"  {stack.name} fan-out {low:>6.0f} msg/s (below the ladder): "
                    + step_summary(rec)
                )
                low /= 2
        finally:
            stop_profilers(profilers)
    return records


LINEAR_LIMIT = 2.0  # the issue: doubling clients or rooms at most doubles CPU


def linear_shapes(cfg: Config) -> list[tuple[str, int, int]]:
    """(shape, clients, room size): the base, clients doubled, rooms doubled at those clients."""
    c, size = cfg.linear_clients, cfg.linear_room_size
    return [("base", c, size), ("clients_x2", 2 * c, size), ("rooms_x2", 2 * c, size // 2)]


def linear_ratios(base: Record, doubled: Record) -> Record:
    """CPU of the doubled shape over its base (equal windows: step + drain), frames beside it."""
    cpu = doubled["server_cpu_s"] / base["server_cpu_s"] if base["server_cpu_s"] else None
    fps = doubled["delivered_fps"] / base["delivered_fps"] if base["delivered_fps"] else None
    return {
        "cpu_ratio": cpu,
        "frames_ratio": fps,
        "sent_ratio": doubled["sent"] / base["sent"] if base["sent"] else None,
        "us_per_frame_ratio": (
            doubled["server_cpu_us_per_frame"] / base["server_cpu_us_per_frame"]
            if doubled["server_cpu_us_per_frame"] and base["server_cpu_us_per_frame"]
            else None
        ),
        "linear": cpu is not None and cpu <= LINEAR_LIMIT,
        # a ratio means something only when neither step was saturated or lossy
        "valid": bool(base["pass"] and doubled["pass"])
        and not (base["load_bound"] or doubled["load_bound"]),
    }


async def scenario_linear(cfg: Config, stack: Stack, out: Path) -> list[Record]:
    """Cost grows linearly: the same per-client rate at a base population and doubled ones.

    Each shape is its own fan-out population (connected, warmed up, one step of
    `cfg.step_seconds`, closed). "Rooms doubled" keeps the doubled client count and halves the
    room size: twice the rooms, the same messages per second, half the frames.
    """
    records: list[Record] = []
    for i, (shape, clients, room_size) in enumerate(linear_shapes(cfg)):
        rate = cfg.linear_rate * clients
        async with fanout_clients(cfg, stack, clients, room_size, f"lin{i}") as (pop, lgs):
            rec = await drive_step(cfg, stack, lgs, pop, i, rate, cfg.step_seconds)
        rec.update(
            kind="shape",
            shape=shape,
            clients=len(pop.specs),
            room_size=room_size,
            rooms=len(pop.members),
            per_client_rate=cfg.linear_rate,
        )
        records.append(rec)
        log(
            f"  {stack.name} linear {shape}: {len(pop.specs)} clients in {len(pop.members)} "
            f"rooms of {room_size}, {rate:.0f} msg/s: {step_summary(rec)}"
        )
        await settle(stack, min(30, cfg.settle_limit))
    base, clients_x2, rooms_x2 = records
    ratios: Record = {"kind": "ratios", "shape": "ratios", "per_client_rate": cfg.linear_rate}
    for name, r in (
        ("clients", linear_ratios(base, clients_x2)),
        ("rooms", linear_ratios(clients_x2, rooms_x2)),
    ):
        ratios.update({f"{name}_{k}": v for k, v in r.items()})
        log(
            f"  {stack.name} linear {name} doubled: CPU x{fmt2(r['cpu_ratio'])}, frames "
            f"x{fmt2(r['frames_ratio'])}: "
            + ("<=" if r["linear"] else ">")
            + f" {LINEAR_LIMIT}"
            + ("" if r["valid"] else " (not valid: a step failed or was load-bound)")
        )
    records.append(ratios)
    return records


async def scenario_latency(cfg: Config, stack: Stack, out: Path) -> list[Record]:
    pop = await population(stack, cfg.latency_clients, 2, "lat")
    lgs = await start_loadgens(1)
    try:
        conn = await connect_all(lgs, pop.specs)
        if conn["failed"]:
            raise RuntimeError(f"latency: {conn['failed']} clients failed to connect")
        await asyncio.sleep(cfg.pause)
        rec = await drive_step(cfg, stack, lgs, pop, 0, cfg.latency_rate, cfg.latency_seconds)
        rec.update(clients=cfg.latency_clients, room_size=2)
        log(
            f"  {stack.name} latency: p50 {fmt(rec['p50_ms'])} p99 {fmt(rec['p99_ms'])} "
            f"max {fmt(rec['max_ms'])} ms, lost {rec['lost']}"
        )
        return [rec]
    finally:
        await stop_loadgens(lgs)


async def scenario_idle(cfg: Config, stack: Stack, out: Path) -> list[Record]:
    n = cfg.idle_connections
    specs: list[dict[str, Any]] = []
    for i in range(n):
        if isinstance(stack, MeshStack):
            url = stack.edge_urls[i % 2] + stack.mint_token(f"idle-{i:06d}")
            specs.append({"idx": i, "url": url, "proto": "mesh", "room": None, "send": False})
        else:
            specs.append({"idx": i, "url": stack.edge_urls[i % 2], "proto": "sio", "room": None})
    # each process holds at most 9,000 sockets (the open-file limit is per process)
    lgs = await start_loadgens(max(cfg.loadgens, math.ceil(n / 9000)))
    edges = stack.edge_names()
    try:
        await asyncio.sleep(cfg.pause)
        before = {e: rss(stack.pids[e]) for e in edges}
        sampler = Sampler(stack.pids).start()
        conn = await connect_all(lgs, specs)
        await asyncio.sleep(3 * cfg.pause)
        after = {e: rss(stack.pids[e]) for e in edges}
        procs = sampler.stop()
        holding = Sampler(stack.pids).start()
        await asyncio.sleep(cfg.idle_hold_seconds)
        hold = holding.stop()
        still_open = sum([(await lg.call("status"))["open"] for lg in lgs])
        per_node = {e: n // 2 + (1 if (i == 0 and n % 2) else 0) for i, e in enumerate(edges)}
        kb = {e: (after[e] - before[e]) / 1024 / max(1, per_node[e]) for e in edges}
        rec: Record = {
            "connections": n,
            "connected": conn["connected"],
            "failed": conn["failed"],
            "open_at_measurement": still_open,
            "connect_seconds": conn["seconds"],
            "connect_rate": conn["connected"] / conn["seconds"] if conn["seconds"] else None,
            "edge_rss_before_mb": {e: v / 2**20 for e, v in before.items()},
            "edge_rss_after_mb": {e: v / 2**20 for e, v in after.items()},
            "kb_per_connection": kb,
            "kb_per_connection_mean": sum(kb.values()) / len(kb),
            "cpu_pct": procs["cpu_pct"],
            "peak_rss_mb": procs["peak_rss_mb"],
            "hold_seconds": hold["wall_s"],
            "hold_cpu_pct": hold["cpu_pct"],
            "hold_server_cpu_pct": sum(hold["cpu_pct"].values()),
        }
        log(
            f"  {stack.name} idle: {conn['connected']}/{n} connected in {conn['seconds']:.1f}s, "
            f"{rec['kb_per_connection_mean']:.1f} KB/conn per edge, holding them "
            f"{rec['hold_server_cpu_pct']:.1f}% of a core"
            + (f", failures {conn['why']}" if conn["failed"] else "")
        )
        return [rec]
    finally:
        for lg in lgs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lg.call("close"), 20)
        await stop_loadgens(lgs)
        await settle(stack, min(30, cfg.settle_limit))


async def scenario_history(cfg: Config, stack: Stack, out: Path) -> list[Record]:
    assert isinstance(stack, MeshStack)
    pop = await population(stack, cfg.history_clients, cfg.history_room_size, "hist")
    lgs = await start_loadgens(1)
    try:
        conn = await connect_all(lgs, pop.specs)
        if conn["failed"]:
            raise RuntimeError(f"history: {conn['failed']} clients failed to connect")
        seed = await drive_step(
            cfg, stack, lgs, pop, 0, cfg.history_seed_rate, cfg.history_seed_seconds
        )
        await settle(stack, min(30, cfg.settle_limit))
        stored = await stored_counts(stack, list(pop.members))
        targets = [
            {"room": room, "token": pop.tokens[room], "maxSeq": stored[room]}
            for room in pop.members
            if stored[room] > 0
        ]
        sampler = Sampler(stack.pids).start()
        pages = await lgs[0].call(
            "http",
            base=stack.history_url,
            targets=targets,
            concurrency=cfg.history_readers,
            duration=cfg.history_seconds,
            limit=50,
        )
        procs = sampler.stop()
        rec: Record = {
            "kind": "pages",
            "readers": cfg.history_readers,
            "limit": 50,
            "messages_stored": sum(stored.values()),
            "requests": pages["ok"],
            "errors": pages["bad"],
            "requests_per_s": pages["ok"] / pages["seconds"],
            **percentiles({int(k): v for k, v in pages["hist"].items()}, pages["bucketMs"]),
            "max_ms": pages["maxMs"],
            "cpu_pct": procs["cpu_pct"],
            "peak_rss_mb": procs["peak_rss_mb"],
            "loadgen_elu": pages["elu"],
            "seed_lost": seed["lost"],
        }
        log(
            f"  {stack.name} history pages: {rec['requests_per_s']:.0f} req/s, "
            f"p99 {fmt(rec['p99_ms'])} ms, errors {rec['errors']}"
        )
        sampler = Sampler(stack.pids).start()
        sync = await lgs[0].call(
            "sync", missed=cfg.history_missed, concurrency=len(pop.specs), timeoutMs=120000
        )
        procs = sampler.stop()
        rec2: Record = {
            "kind": "sync",
            "clients": len(pop.specs),
            "missed_per_client": cfg.history_missed,
            "synced": sync["synced"],
            "failed": sync["failed"],
            "seconds": sync["seconds"],
            "replayed_frames": sync["replayed"],
            "p50_ms": sync["p50Ms"],
            "p99_ms": sync["p99Ms"],
            "max_ms": sync["maxMs"],
            "cpu_pct": procs["cpu_pct"],
            "peak_rss_mb": procs["peak_rss_mb"],
        }
        log(
            f"  {stack.name} sync: {sync['synced']}/{len(pop.specs)} synced in "
            f"{sync['seconds']:.2f}s, {sync['replayed']} frames replayed, "
            f"p99 {fmt(sync['p99Ms'])} ms"
        )
        return [rec, rec2]
    finally:
        await stop_loadgens(lgs)


async def stored_counts(stack: MeshStack, rooms: list[str]) -> dict[str, int]:
    """The latest stored seq of each room (seq is gap-free: the stored count)."""
    from infra.settings import CommonSettings
    from infra.store import open_dynamo

    assert stack.infra is not None
    prefix = stack.infra.table_prefix
    settings = CommonSettings(dynamo_url=stack.infra.dynamo_url, table_prefix=prefix)
    table = f"{prefix}messages"
    sem = asyncio.Semaphore(16)
    async with open_dynamo(settings) as client:

        async def one(room: str) -> int:
            async with sem:
                r = await client.query(
                    TableName=table,
                    KeyConditionExpression="pk = :p",
                    ExpressionAttributeValues={":p": {"S": room}},
                    ScanIndexForward=False,
                    Limit=1,
                    ProjectionExpression="sk",
                )
                items = r.get("Items", [])
                return int(items[0]["sk"]["N"]) if items else 0

        counts = await asyncio.gather(*(one(r) for r in rooms))
    return dict(zip(rooms, counts, strict=True))


async def ensure_table(settings: CommonSettings, table: str) -> None:
    """A (pk string, sk number) table of the bench's own, created if missing, once ACTIVE."""
    from infra.store import open_dynamo_admin

    async with open_dynamo_admin(settings) as admin:
        # create (idempotent), then wait until ACTIVE; a slow store may time a call out
        for _ in range(200):
            try:
                d = await admin.describe_table(TableName=table)
                if d["Table"].get("TableStatus") == "ACTIVE":
                    break
            except admin.exceptions.ResourceNotFoundException:
                with contextlib.suppress(admin.exceptions.ResourceInUseException):
                    await admin.create_table(
                        TableName=table,
                        KeySchema=[
                            {"AttributeName": "pk", "KeyType": "HASH"},
                            {"AttributeName": "sk", "KeyType": "RANGE"},
                        ],
                        AttributeDefinitions=[
                            {"AttributeName": "pk", "AttributeType": "S"},
                            {"AttributeName": "sk", "AttributeType": "N"},
                        ],
                        BillingMode="PAY_PER_REQUEST",
                    )
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"table {table} did not become ACTIVE")


async def put_ceiling(stack: MeshStack, concurrency: int, seconds: float) -> dict[str, Any]:
    """The store's own ceiling: single-item conditional PutItems from the services' client."""
    from infra.settings import CommonSettings
    from infra.store import if_absent, open_dynamo

    assert stack.infra is not None
    prefix = stack.infra.table_prefix
    settings = CommonSettings(dynamo_url=stack.infra.dynamo_url, table_prefix=prefix)
    table = f"{prefix}ceiling"
    done = 0
    errors = 0
    await ensure_table(settings, table)
    # the data-plane client the services use (infra.store.open_dynamo)
    async with open_dynamo(settings) as client:
        body = "x" * 120
        end = time.monotonic() + seconds

        async def worker(w: int) -> None:
            nonlocal done, errors
            seq = 0
            while time.monotonic() < end:
                seq += 1
                try:
                    await client.put_item(
                        TableName=table,
                        Item={
                            "pk": {"S": f"room-{w}"},
                            "sk": {"N": str(seq)},
                            "content": {"S": body},
                            "messageId": {"S": f"m-{w}-{seq}"},
                        },
                        **if_absent("pk"),  # the services' form of the condition
                    )
                    done += 1
                except Exception:
                    errors += 1

        sampler = Sampler(stack.pids).start()
        t0 = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.monotonic() - t0
        procs = sampler.stop()
    return {
        "puts_per_s": done / wall,
        "errors": errors,
        "concurrency": concurrency,
        "dynalite_cpu_pct": procs["cpu_pct"].get("dynalite"),
    }


async def scenario_ingest(cfg: Config, stack: Stack, out: Path) -> list[Record]:
    assert isinstance(stack, MeshStack)
    ceiling = await put_ceiling(stack, cfg.ingest_concurrency, cfg.ingest_seconds)
    log(
        f"  {stack.name} store ceiling: {ceiling['puts_per_s']:.0f} conditional PutItem/s "
        f"at concurrency {cfg.ingest_concurrency}"
    )
    pop = await population(stack, cfg.ingest_clients, 2, "ing")
    rooms = list(pop.members)
    lgs = await start_loadgens(1)
    window: dict[str, Any] = {}

    async def measure() -> None:
        # the stored count over the middle of the step (steady state, backlog excluded)
        await asyncio.sleep(min(2.0, cfg.ingest_seconds * 0.2))
        t0 = time.monotonic()
        c0 = await stored_counts(stack, rooms)
        await asyncio.sleep(max(0.5, cfg.ingest_seconds * 0.6))
        c1 = await stored_counts(stack, rooms)
        window["stored"] = sum(c1.values()) - sum(c0.values())
        window["seconds"] = time.monotonic() - t0

    try:
        conn = await connect_all(lgs, pop.specs)
        if conn["failed"]:
            raise RuntimeError(f"ingest: {conn['failed']} clients failed to connect")
        step = await drive_step(
            cfg, stack, lgs, pop, 0, cfg.ingest_rate, cfg.ingest_seconds, during=measure
        )
    finally:
        await stop_loadgens(lgs)
    await settle(stack, min(30, cfg.settle_limit))
    stored_per_s = window["stored"] / window["seconds"]
    rec: Record = {
        "offered_rate": cfg.ingest_rate,
        "clients": cfg.ingest_clients,
        "sent": step["sent"],
        "stored_per_s": stored_per_s,
        "ceiling_puts_per_s": ceiling["puts_per_s"],
        "ceiling_concurrency": ceiling["concurrency"],
        "ceiling_dynalite_cpu_pct": ceiling["dynalite_cpu_pct"],
        "ratio_to_ceiling": stored_per_s / ceiling["puts_per_s"] if ceiling["puts_per_s"] else None,
        "cpu_pct": step["cpu_pct"],
        "peak_rss_mb": step["peak_rss_mb"],
        "p99_ms": step["p99_ms"],
        "loadgen_elu": step["loadgen_elu"],
        # past the mesh's rate: error frames (refusals) and connections closed on the way
        "errors": step["errors"],
        "open_connections": step["open_connections"],
    }
    log(
        f"  {stack.name} ingest: {stored_per_s:.0f} stored msg/s "
        f"(offered {cfg.ingest_rate:.0f}) vs "
        f"ceiling {ceiling['puts_per_s']:.0f} PutItem/s; error frames {step['errors']}, "
        f"{step['open_connections']}/{cfg.ingest_clients} connections open at the end"
    )
    return [rec]


# One round trip at a time through each hop a persisted message crosses, measured from this
# process: with a pause before each (every process has gone back to sleep, as at the latency
# scenario's 100 msg/s spread over 100 clients) and back to back (the processes still awake).
# Why: the latency scenario gives the whole path; this names what each hop adds on this
# machine, so the latency bound in docs/performance.md can be checked on any machine.
HOP_GAP_SECONDS = 0.01
HOP_SAMPLES_MAX = 150  # per socket, under the edge's frame bucket (a burst of 200)


async def _samples(
    n: int, gap: float, once: Callable[[], Awaitable[tuple[float, ...]]]
) -> list[tuple[float, ...]]:
    """What `n` calls of `once` measured, one at a time, `gap` seconds of quiet before each
    (after one unrecorded call: connections, subscriptions and caches set up on first use)."""
    await once()
    measured: list[tuple[float, ...]] = []
    for _ in range(n):
        if gap:
            await asyncio.sleep(gap)
        measured.append(await once())
    return measured


async def _round_trips(n: int, gap: float, call: Callable[[], Awaitable[Any]]) -> list[float]:
    """Seconds of each of `n` calls of `call` (see `_samples`)."""

    async def timed() -> tuple[float]:
        t0 = time.perf_counter()
        await call()
        return (time.perf_counter() - t0,)

    return [took for (took,) in await _samples(n, gap, timed)]


def _hop_figures(took: list[float]) -> Record:
    ms = sorted(t * 1000 for t in took)
    return {
        "samples": len(ms),
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max_ms": ms[-1],
    }


async def scenario_hops(cfg: Config, stack: Stack, out: Path) -> list[Record]:
    """Round trips of each hop, one at a time, spaced and back to back (see HOP_GAP_SECONDS)."""
    import nats
    import redis.asyncio as aioredis
    import websockets

    from infra.settings import CommonSettings
    from infra.store import if_absent, open_dynamo

    assert isinstance(stack, MeshStack)
    assert stack.infra is not None
    infra = stack.infra
    settings = CommonSettings(dynamo_url=infra.dynamo_url, table_prefix=infra.table_prefix)
    table = f"{infra.table_prefix}hops"
    await ensure_table(settings, table)
    users = await stack.create_users(2, "hops")
    (room,) = await stack.create_rooms([users])
    n = cfg.hop_samples
    modes = (("spaced", HOP_GAP_SECONDS), ("back-to-back", 0.0))
    records: list[Record] = []

    def record(hop: str, what: str, mode: str, took: list[float]) -> None:
        records.append({"hop": hop, "what": what, "mode": mode, **_hop_figures(took)})

    nc = await nats.connect(infra.nats_url)
    red = aioredis.from_url(infra.redis_url, socket_timeout=10, socket_connect_timeout=10)
    stream = f"BENCH_HOPS_{os.getpid()}"
    try:
        for mode, gap in modes:
            record("redis", "PING", mode, await _round_trips(n, gap, red.ping))

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        sub = await nc.subscribe("bench.hops.echo", cb=echo)
        body = b"x" * 400  # about a command's size
        for mode, gap in modes:
            took = await _round_trips(
                n, gap, lambda: nc.request("bench.hops.echo", body, timeout=5)
            )
            record("nats", "request and reply through nats-server", mode, took)
        await sub.unsubscribe()

        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=["bench.hops.js"], storage="file")
        for mode, gap in modes:
            took = await _round_trips(n, gap, lambda: js.publish("bench.hops.js", body))
            record("jetstream", "publish and its ack (file stream)", mode, took)

        async with open_dynamo(settings) as client:
            counter = iter(range(10**9))

            async def put() -> None:
                await client.put_item(
                    TableName=table,
                    Item={
                        "pk": {"S": f"hops-{os.getpid()}"},
                        "sk": {"N": str(next(counter))},
                        "content": {"S": "x" * 120},
                    },
                    **if_absent("pk"),
                )

            for mode, gap in modes:
                record("store", "conditional PutItem", mode, await _round_trips(n, gap, put))

        sender, other = users

        async def refreshed(ws: Any, user: dict[str, Any]) -> None:
            """A `refresh` with the user's own token, answered by the edge alone."""
            await ws.send(json.dumps({"action": "refresh", "token": user["token"]}))
            await asyncio.wait_for(answered(ws, "refreshed"), 10)

        for mode, gap in modes:
            # fresh sockets per hop and mode: each stays inside its per-connection frame bucket
            # (HOP_SAMPLES_MAX frames at most, against a burst of 200)
            async with websockets.connect(stack.edge_urls[0] + sender["token"]) as e:
                took = await _round_trips(
                    min(n, HOP_SAMPLES_MAX), gap, lambda: refreshed(e, sender)
                )
                record("edge", "WS `refresh` answered by the edge", mode, took)
            async with (
                websockets.connect(stack.edge_urls[0] + sender["token"]) as a,
                websockets.connect(stack.edge_urls[1] + other["token"]) as b,
            ):
                # answered only after the hub's attach: both sockets follow the room from then
                await refreshed(a, sender)
                await refreshed(b, other)

                async def message() -> tuple[float, float]:
                    """One create_message: seconds until each copy came (a's, then b's)."""
                    message_id = f"hops-{time.time_ns()}"
                    frame = {
                        "action": "create_message",
                        "roomId": room,
                        "messageId": message_id,
                        "content": "x" * 120,
                        "senderId": sender["id"],
                        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                    t0 = time.perf_counter()
                    await a.send(json.dumps(frame))
                    async with asyncio.timeout(10), asyncio.TaskGroup() as group:
                        got_a = group.create_task(answered(a, "message_created", message_id))
                        got_b = group.create_task(answered(b, "message_created", message_id))
                    return got_a.result() - t0, got_b.result() - t0

                took_both = await _samples(min(n, HOP_SAMPLES_MAX), gap, message)
                record(
                    "message",
                    "create_message to the sender's own copy",
                    mode,
                    [own for own, _ in took_both],
                )
                record(
                    "message",
                    "create_message to the other node's member",
                    mode,
                    [far for _, far in took_both],
                )
    finally:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(stream)
        with contextlib.suppress(Exception):
            await nc.close()
        with contextlib.suppress(Exception):
            await red.aclose()
    for r in records:
        if r["mode"] == "spaced":
            log(
                f"  {stack.name} hop {r['hop']} ({r['what']}): spaced p50 {fmt2(r['p50_ms'])} "
                f"p99 {fmt2(r['p99_ms'])} ms"
            )
    return records


async def answered(ws: Any, kind: str, message_id: str | None = None) -> float:
    """Read server frames until one of type `kind` (with `message_id`'s message, if given);
    when it came (perf_counter). An `error` frame fails the scenario (a hop refused is not a
    round trip)."""
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("type") == kind and (
            message_id is None or frame.get("message", {}).get("messageId") == message_id
        ):
            return time.perf_counter()
        if frame.get("type") == "error":
            raise RuntimeError(f"hops: the edge answered {frame}")


RUNNERS: dict[str, Callable[[Config, Stack, Path], Awaitable[list[Record]]]] = {
    "idle": scenario_idle,
    "latency": scenario_latency,
    "fanout": scenario_fanout,
    "linear": scenario_linear,
    "history": scenario_history,
    "ingest": scenario_ingest,
    "hops": scenario_hops,
}


# ---- profiles ------------------------------------------------------------------------------


def start_profilers(
    stack: Stack, out: Path, fmt: str = "flamegraph"
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """py-spy on every Python process: SVG flame graphs, or collapsed stacks (`raw`) to grep."""
    pyspy = Path(sys.executable).parent / "py-spy"
    folder = out / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    started = []
    for name in stack.python_processes:
        target = folder / f"{stack.name}-{name}.{'svg' if fmt == 'flamegraph' else 'txt'}"
        argv = [str(pyspy), "record", "--pid", str(stack.pids[name]), "--rate", "50",
                "--nonblocking", "--format", fmt, "-o", str(target)]  # fmt: skip
        started.append(
            (name, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        )
    return started


def stop_profilers(profilers: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, p in profilers:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # py-spy writes its flame graph on SIGINT
    for name, p in profilers:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.returncode not in (0, -signal.SIGINT) and p.stderr is not None:
            log(f"  py-spy for {name}: exit {p.returncode}: {p.stderr.read().decode()[-300:]}")


# ---- main ----------------------------------------------------------------------------------


def log(text: str) -> None:
    print(time.strftime("%H:%M:%S"), text, flush=True)


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def fmt2(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def raise_nofile() -> None:
    """Children inherit it: 20,000 sockets need more than the default 1,024 descriptors."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (1 << 20, 262144, 65536):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_stack(cfg: Config, stack_key: str, run: int) -> list[Record]:
    records: list[Record] = []
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{stack_key}-"))
    stack = STACKS[stack_key](workdir)
    LIVE_STACKS.append(stack)
    log(f"run {run + 1}/{cfg.runs}: starting {stack.name}")
    try:
        await asyncio.to_thread(stack.start)
        log(f"  {stack.name} is up: " + ", ".join(f"{n} {p}" for n, p in stack.pids.items()))
        for scenario in cfg.scenarios:
            if scenario in MESH_ONLY and not isinstance(stack, MeshStack):
                continue
            if isinstance(stack, MeshStack) and scenario in stack.skipped_scenarios:
                log(f"  {stack.name}: {scenario} skipped (see `bench/stacks.py`)")
                continue
            try:
                recs = await RUNNERS[scenario](cfg, stack, cfg.out)
            except Exception as e:  # a scenario failing must not stop the others
                log(f"  {stack.name} {scenario} FAILED: {e!r}")
                recs = [{"error": repr(e)}]
            for i, r in enumerate(recs):
                r.update(stack=stack.name, scenario=scenario, run=run, index=i)
            records.extend(recs)
            await settle(stack, min(30, cfg.settle_limit))
    finally:
        await asyncio.to_thread(stack.stop)
        LIVE_STACKS.remove(stack)
        if os.environ.get("BENCH_KEEP_LOGS"):
            log(f"  logs kept in {workdir}/logs")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return records


async def main_async(cfg: Config) -> int:
    cfg.out.mkdir(parents=True, exist_ok=True)
    raw: list[Record] = []
    started = time.time()
    for run in range(cfg.runs):
        for key in cfg.stacks:
            raw.extend(await run_stack(cfg, key, run))
            # what is done so far, in case a later stack hangs
            partial = "".join(json.dumps({"type": "run", **r}) + "\n" for r in raw)
            (cfg.out / "results.jsonl").write_text(partial)
    meta = report.machine(cfg.quick, cfg.runs, started, asdict(cfg))
    report.write_all(cfg.out, raw, meta)
    log(f"results in {cfg.out}: results.jsonl, table.md, *.png")
    return 0


def parse(argv: list[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stacks", default="mesh,pysio,node")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--runs", type=int)
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--quick", action="store_true", help="1 run, short steps")
    ap.add_argument("--smoke", action="store_true", help="seconds per stack, tiny load (tests)")
    ap.add_argument("--profile", action="store_true", help="py-spy flame graphs during fan-out")
    ap.add_argument(
        "--profile-format",
        choices=("flamegraph", "raw", "speedscope"),
        default="flamegraph",
        help="py-spy output: SVG flame graphs, or collapsed stacks to read as text",
    )
    ap.add_argument("--loadgens", type=int, help="load-generator processes for fan-out, linear")
    ap.add_argument("--clients", type=int)
    ap.add_argument("--room-size", type=int)
    ap.add_argument("--rates", help="comma list of offered msg/s")
    ap.add_argument("--step-seconds", type=float)
    ap.add_argument("--idle", type=int, dest="idle_connections")
    ap.add_argument("--idle-hold", type=float, dest="idle_hold_seconds", help="idle: seconds held")
    ap.add_argument("--latency-seconds", type=float)
    ap.add_argument("--history-seconds", type=float)
    ap.add_argument("--ingest-seconds", type=float)
    ap.add_argument("--ingest-rate", type=float)
    ap.add_argument("--linear-clients", type=int, help="linear: base clients (doubled: 2x)")
    ap.add_argument("--linear-room-size", type=int, help="linear: room size (even)")
    ap.add_argument("--linear-rate", type=float, help="linear: msg/s sent by each client")
    ap.add_argument("--hop-samples", type=int, help="hops: round trips per hop and mode")
    ap.add_argument(
        "--store-in-memory",
        action="store_true",
        help="diagnostic: the mesh's dynalite keeps its tables in memory, not on disk",
    )
    a = ap.parse_args(argv)
    cfg = Config(
        stacks=[s for s in a.stacks.split(",") if s],
        scenarios=[s for s in a.scenarios.split(",") if s],
        out=a.out,
        profile=a.profile,
        profile_format=a.profile_format,
        quick=a.quick or a.smoke,
        store_in_memory=a.store_in_memory,
    )
    MeshStack.store_in_memory = cfg.store_in_memory
    for s in cfg.stacks:
        if s not in STACKS:
            ap.error(f"unknown stack {s!r} (one of {', '.join(STACKS)})")
    for s in cfg.scenarios:
        if s not in RUNNERS:
            ap.error(f"unknown scenario {s!r} (one of {', '.join(RUNNERS)})")
    if a.quick:
        cfg.runs = 1
        cfg.step_seconds = 5
        cfg.latency_seconds = 8
        cfg.history_seed_seconds = 6
        cfg.history_seconds = 6
        cfg.ingest_seconds = 8
    if a.smoke:
        cfg.runs = 1
        cfg.clients, cfg.room_size, cfg.rates = 20, 4, [40, 80]
        cfg.step_seconds, cfg.drain_seconds, cfg.warmup_seconds = 1.5, 0.6, 0.5
        cfg.latency_clients, cfg.latency_rate, cfg.latency_seconds = 10, 20, 1.5
        cfg.idle_connections, cfg.idle_hold_seconds = 100, 0.5
        cfg.history_clients, cfg.history_room_size = 20, 4
        cfg.history_seed_rate, cfg.history_seed_seconds = 40, 1.5
        cfg.history_readers, cfg.history_seconds, cfg.history_missed = 4, 1.0, 5
        cfg.ingest_clients, cfg.ingest_rate, cfg.ingest_seconds = 20, 100, 2.0
        cfg.ingest_concurrency = 8
        cfg.hop_samples = 5
        cfg.linear_clients, cfg.linear_room_size, cfg.linear_rate = 8, 4, 2.0
        cfg.pause, cfg.settle_limit = 0.2, 2.0
    if a.runs is not None:
        cfg.runs = a.runs
    for key in ("loadgens", "clients", "room_size", "step_seconds", "idle_connections",
                "idle_hold_seconds",
                "latency_seconds", "history_seconds", "ingest_seconds", "ingest_rate",
                "linear_clients", "linear_room_size", "linear_rate", "hop_samples"):  # fmt: skip
        v = getattr(a, key)
        if v is not None:
            setattr(cfg, key, v)
    if cfg.hop_samples < 1:
        ap.error("--hop-samples must be at least 1")
    if cfg.linear_room_size < 2 or cfg.linear_room_size % 2:
        ap.error("--linear-room-size must be even (rooms doubled = rooms of half that size)")
    if cfg.linear_clients < cfg.linear_room_size or cfg.linear_clients % cfg.linear_room_size:
        ap.error("--linear-clients must be a multiple of --linear-room-size")
    if a.rates:
        cfg.rates = [int(r) for r in a.rates.split(",")]
    return cfg


LIVE_STACKS: list[Stack] = []
LIVE_LOADGENS: set[int] = set()


def on_signal(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: stop everything this run started (by pid), whatever the loop does."""
    log(f"signal {signum}: stopping the load generators and stacks this run started")
    for pid in LIVE_LOADGENS:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for stack in LIVE_STACKS:
        with contextlib.suppress(Exception):
            stack.stop()
        if not os.environ.get("BENCH_KEEP_LOGS"):  # as after a normal run: no temp folder left
            shutil.rmtree(stack.workdir, ignore_errors=True)
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    raise_nofile()
    random.seed(7)
    try:
        import uvloop

        return uvloop.run(main_async(cfg))
    except ImportError:
        return asyncio.run(main_async(cfg))


if __name__ == "__main__":
    sys.exit(main())
