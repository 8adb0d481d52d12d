"""Shared by the browser tests: the mesh handle and where screenshots go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mesh.testing import ServiceLauncher, ServiceProcess

SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"


@dataclass
class WebMesh:
    """The running mesh; `edges[i]` can be stopped and started again on its port."""

    launcher: ServiceLauncher
    users: str
    rooms: str
    history: str
    edges: list[ServiceProcess]

    def stop_edge(self, index: int) -> None:
        """Stop edge `index` by pid (SIGTERM: its clients get 1001 and reconnect)."""
        self.edges[index].stop()

    def start_edge(self, index: int) -> ServiceProcess:
        """Start a new node in place of edge `index`, on the same port and settings."""
        old = self.edges[index]
        new = ServiceProcess(old.name, old.module, old.port, dict(old.env), old.log_path)
        self.launcher.started.append(new)
        self.edges[index] = new.start()
        return new
