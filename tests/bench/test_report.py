"""The benchmark's report: figures the harness recorded reach `table.md` (no servers needed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import report  # noqa: E402  (bench/ is scripts, not a package)


def _step(run: int, rate: int, **figures: Any) -> dict[str, Any]:
    """One fan-out step as `bench/run.py` records it (the figures the table reads)."""
    base: dict[str, Any] = {
        "stack": "chat-mesh", "scenario": "fanout", "run": run, "index": 0,
        "offered_rate": rate, "sent": rate * 20, "delivered_fps": rate * 10.0, "lost": 0,
        "duplicated": 0, "out_of_order": 0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0,
        "max_ms": 4.0, "server_cpu_pct": 50.0, "server_cpu_us_per_frame": 70.0,
        "loadgen_cpu_pct": 10.0, "loadgen_elu": 0.1, "other_cpu_pct": 0.0, "load_bound": False,
        "pass": True, "cpu_pct": {"edge-a": 20.0}, "peak_rss_mb": {"edge-a": 100.0},
    }  # fmt: skip
    base.update(figures)
    return base


def test_a_failing_steps_late_frames_are_reported_apart_from_frames_never_delivered() -> None:
    """A failing step followed up by the harness shows how many of its "lost" frames came late
    and how many never came, per run."""
    raw = [
        _step(0, 1000),
        _step(0, 4000, lost=500, arrived_after_drain=480, never_delivered=20,
              duplicated_after_drain=0, **{"pass": False}),
    ]  # fmt: skip
    meta = {
        "versions": {"python": "3"}, "cores": 2, "cpu": "x", "memory_gb": 1, "os": "linux",
        "mode": "quick", "runs": 1, "started": "now", "minutes": 1, "load_average_at_end": [0],
        "config": {"clients": 10, "room_size": 2, "step_seconds": 1, "max_p99_ms": 100},
    }  # fmt: skip
    text = report.table(report.aggregate(raw), raw, meta)
    assert "chat-mesh at 4,000 msg/s (run 1): 500 not within the step; 480 arrived later" in text
    assert "20 never, 0 duplicated" in text
    assert "followed up" in text
