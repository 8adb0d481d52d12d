"""Smoke of `make bench`: every stack and scenario with a tiny load, so the benchmark never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
