"""The fault suite (`make faults`): collected only when asked for, never by a plain `pytest`.

It runs with `-m faults` (what `make faults` passes) or with CHAT_FAULTS=1. Each scenario gets
its own mesh of real processes (FaultMesh), stopped by pid when the scenario ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # faultkit (importlib mode)

from faultkit import FaultMesh


def _wanted(config: pytest.Config) -> bool:
    return "faults" in (config.option.markexpr or "") or os.environ.get("CHAT_FAULTS") == "1"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave the fault suite out of the ordinary test run."""
    if collection_path.name.startswith("test_") and not _wanted(config):
        return True
    return None


@pytest.fixture
def fault_mesh() -> Iterator[list[FaultMesh]]:
    """Meshes made by a scenario (append them); each is stopped by pid afterwards."""
    made: list[FaultMesh] = []
    try:
        yield made
    finally:
        for mesh in made:
            mesh.stop()
