"""Smoke of `make bench`: every stack and scenario with a tiny load, so the benchmark never rots."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mesh.testhelpers import MeshProcess, pid_alive, port_env

ROOT = Path(__file__).resolve().parents[2]
NODE_DEPS = [
    ROOT / "bench" / "peers" / "node" / "node_modules",
    ROOT / "bench" / "loadgen" / "node_modules",
]


@pytest.mark.timeout(330)
def test_bench_smoke_runs_and_writes_its_files(tmp_path: Path) -> None:
    """`bench/run.py --smoke` runs all three stacks and writes the JSON lines, table and plots."""
    missing = [str(p) for p in NODE_DEPS if not p.exists()]
    assert not missing, f"run `make bench-deps` first (missing {missing})"
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("results.jsonl", "table.md", "fanout_throughput.png", "fanout_latency.png"):
        assert (out / name).stat().st_size > 0, name
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    stacks = {r["stack"] for r in lines if r["type"] == "run"}
    assert stacks == {"chat-mesh", "python-socketio", "node-socketio"}
    failed = [r for r in lines if r["type"] == "run" and "error" in r]
    assert not failed, failed
    # the linear-cost scenario: three shapes and the ratios for every stack, medians included
    for kind in ("run", "median"):
        shapes = {
            (r["stack"], r["shape"])
            for r in lines
            if r["type"] == kind and r["scenario"] == "linear"
        }
        assert shapes == {
            (s, shape) for s in stacks for shape in ("base", "clients_x2", "rooms_x2", "ratios")
        }, (kind, shapes)
    assert "## Linear cost" in (out / "table.md").read_text()
    # the idle scenario measures every stack's servers while they hold the connections
    idle = [r for r in lines if r["type"] == "run" and r["scenario"] == "idle"]
    assert {r["stack"] for r in idle} == stacks
    assert all(r["hold_seconds"] > 0 and r["hold_server_cpu_pct"] >= 0 for r in idle), idle
    # the hops scenario (mesh only): every hop's round trip, spaced and back to back
    hops = [r for r in lines if r["type"] == "run" and r["scenario"] == "hops"]
    assert {r["stack"] for r in hops} == {"chat-mesh"}
    measured = {(r["hop"], r["mode"]) for r in hops if r["samples"] > 0 and r["p50_ms"] > 0}
    assert measured == {
        (hop, mode)
        for hop in ("redis", "nats", "jetstream", "store", "edge", "message")
        for mode in ("spaced", "back-to-back")
    }, measured
    assert "## Hops" in (out / "table.md").read_text()


@pytest.mark.timeout(330)
def test_bench_drives_the_mesh_make_run_is_running(tmp_path: Path) -> None:
    """`--stacks running`: the bench finds `make run`'s processes by the same CHAT_* settings,
    drives and measures them, and leaves them running (it never starts or stops them)."""
    missing = [str(p) for p in NODE_DEPS if not p.exists()]
    assert not missing, f"run `make bench-deps` first (missing {missing})"
    env = port_env(CHAT_DATA_DIR=str(tmp_path / "data"), CHAT_READY_TIMEOUT="90")
    mesh = MeshProcess(env)
    try:
        mesh.wait_for("Ctrl-C to stop", timeout=150)
        out = tmp_path / "results"
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "run.py"),
                "--smoke",
                "--stacks",
                "running",
                "--scenarios",
                "idle,latency,fanout,history,ingest,hops",
                "--out",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        runs = [r for r in lines if r["type"] == "run"]
        assert {r["stack"] for r in runs} == {"chat-mesh (make run)"}
        assert not [r for r in runs if "error" in r], runs
        scenarios = {r["scenario"] for r in runs}
        assert scenarios == {"idle", "latency", "fanout", "history"}  # ingest, hops skipped
        fanout = [r for r in runs if r["scenario"] == "fanout"]
        assert fanout
        assert all(r["sent"] > 0 and r["lost"] == 0 for r in fanout), fanout
        # measured the processes make run started (its console prints their pids)
        started = {("dynalite" if n == "dynamo" else n): p for n, p in mesh.pids().items()}
        assert set(fanout[0]["cpu_pct"]) == set(started)
        up = re.search(r"is up: (.*)", proc.stdout)
        assert up, proc.stdout
        measured = dict(item.rsplit(" ", 1) for item in up.group(1).split(", "))
        assert {n: int(p) for n, p in measured.items()} == started
        assert "chat-mesh (make run)" in (out / "table.md").read_text()
        # and left them running
        assert mesh.popen.poll() is None
        users = f"http://127.0.0.1:{env['CHAT_USERS_PORT']}/readyz"
        assert httpx.get(users, timeout=5).status_code == 200
    finally:
        code = mesh.terminate()
    assert code == 0, mesh.text
    assert not any(pid_alive(p) for p in mesh.pids().values())
