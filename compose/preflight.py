"""`make run` step 1, before anything is built: refuse at once when a configured port is taken.

Standard library only, run with the system python3. The port table lives in
compose/src/mesh/ports.py (loaded here by path, imported by the supervisor as `mesh.ports`), so
this check and the supervisor's own check are the same code.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PORTS_FILE = Path(__file__).resolve().parent / "src" / "mesh" / "ports.py"


def main() -> int:
    spec = importlib.util.spec_from_file_location("_chat_mesh_ports", PORTS_FILE)
    if spec is None or spec.loader is None:
        print(f"make run: cannot load {PORTS_FILE}", file=sys.stderr)
        return 2
    ports = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ports  # dataclasses look their module up here
    spec.loader.exec_module(ports)
    try:
        ports.preflight()
    except ports.PortConfigError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
