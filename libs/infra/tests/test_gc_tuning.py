"""The garbage collector settings of every service process (`infra.serve.tune_gc`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# A heap that keeps growing, as an edge's does while sockets arrive; counts full collections.
PROGRAM = r"""
import gc, json, sys
if sys.argv[1] == "tuned":
    from infra.serve import tune_gc
    tune_gc()
full = []
def count(phase, info):
    if phase == "stop" and info["generation"] == 2:
        full.append(1)
gc.callbacks.append(count)
kept = [[i] for i in range(800_000)]  # lists: always tracked by the collector
print(json.dumps({"full": len(full), "frozen": gc.get_freeze_count(),
                  "threshold": list(gc.get_threshold())}))
"""


def run(mode: str, **env: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_a_growing_heap_is_walked_whole_far_less_often() -> None:
    """Python's defaults walk a growing heap whole again and again; tuned, at most once."""
    default = run("default")
    tuned = run("tuned")
    assert default["full"] >= 5, default
    assert tuned["full"] <= 1, tuned
    assert tuned["frozen"] > 0, tuned
    assert tuned["threshold"] == [10_000, 10, 10]


def test_chat_gc_tuning_0_keeps_pythons_defaults() -> None:
    """CHAT_GC_TUNING=0 leaves the collector as Python sets it."""
    kept = run("tuned", CHAT_GC_TUNING="0")
    assert kept["frozen"] == 0
    assert kept["threshold"] == [700, 10, 10]
    assert kept["full"] >= 5, kept
